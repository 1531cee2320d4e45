"""``python -m ktamv_helper bench --photos`` as a user runs it, on a folder
of their own photos: a real subprocess."""

import os
import re
import subprocess
import sys

import cv2
import numpy as np

from ktamv_helper.simulation.render import NozzleLook, render_nozzle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "ktamv_helper", "bench", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_a_folder_of_photos_and_the_camera_conditions(tmp_path):
    # A user's own photo, named with its centre in a README as the shared
    # photos are: the table scores its warps, the README centre is checked,
    # and the rendered looks are scored under every camera condition.
    photo = render_nozzle((320, 240), (161.3, 118.6), 12.0,
                          NozzleLook(noise_sigma=2.0), np.random.default_rng(2))
    cv2.imwrite(str(tmp_path / "mine.png"), photo)
    (tmp_path / "README.md").write_text("| `mine.png` | ≈ (161.3, 118.6), r 12 |\n")
    done = _bench("--photos", str(tmp_path), "--variants", "6", "--ring-light", "6",
                  "--conditions", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    mine = re.search(r"^\| mine.png \(320x240, r [\d.]+\) \| 6 \| (\d+) \|", out, re.M)
    assert mine and int(mine.group(1)) >= 5, out
    centre = re.search(r"^\| mine.png \| \(([\d.]+), ([\d.]+)\).*\| ([\d.]+) \|$", out, re.M)
    assert centre and float(centre.group(3)) < 0.5, out
    assert "Ring-light found by bore radius: " in out
    # Two looks x seven conditions, each with its 2 frames.
    rows = re.findall(r"^\| (ring-light brass|random look), .*\| 2 \| \d+ \|", out, re.M)
    assert len(rows) == 14, out
    assert re.search(r"Of the \d+ wrong circles, \d+ had the centre within 2 px", out)
    # The photo under each camera condition, against its own reference:
    # found when only defocused by 1.5 px, over-exposed x2 or relit blue.
    photo_rows = dict(re.findall(r"^\| mine.png, ([^|]+) \| 2 \| (\d+) \|", out, re.M))
    assert len(photo_rows) == 14, out
    # At x0.08 every single frame is too dim; the sum the helper makes is not.
    assert photo_rows["under-exposed x0.08, frames summed"] == "2", out
    assert photo_rows["defocus sigma 1.5 px"] == "2", out
    assert photo_rows["over-exposed x2"] == "2", out
    assert photo_rows["MJPEG q50"] == "2", out
    assert photo_rows["deep-blue LED light"] == "2", out
    assert re.search(r"Of the \d+ missed without a refusal, \d+ came with an exposure hint", out)


def test_without_the_folder_the_rendered_looks_are_still_scored(tmp_path):
    done = _bench("--photos", str(tmp_path / "absent"), "--ring-light", "3",
                  "--conditions", "0")
    assert done.returncode == 0, done.stderr
    assert "no folder" in done.stderr
    assert "renderer: ring-light brass, 640x480, r 3-216 (truth) | 3 |" in done.stdout
    assert "wrong circles" not in done.stdout


def test_unreadable_and_nozzle_free_photos_are_named_not_scored(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((120, 160, 3), 90, np.uint8))
    done = _bench("--photos", str(tmp_path), "--variants", "2", "--ring-light", "0",
                  "--conditions", "0")
    assert done.returncode == 0, done.stderr
    assert "| broken.jpg | 0 | not an image OpenCV can read |" in done.stdout
    assert "| grey.png (160x120) | 0 | reference not found |" in done.stdout
