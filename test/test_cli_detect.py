"""``python -m ktamv_helper detect`` as a user runs it: a real subprocess."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ktamv_helper.simulation.render import random_look, render_nozzle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUTH = (301.37, 207.82)


def _run(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "ktamv_helper", "detect", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(4)
    nozzle = str(folder / "nozzle.png")
    cv2.imwrite(nozzle, render_nozzle((640, 480), TRUTH, 14.0,
                                      random_look(rng, jpeg_quality=0, second_circle=False), rng))
    empty = str(folder / "empty.jpg")
    cv2.imwrite(empty, render_nozzle((640, 480), None, 14.0, random_look(rng), rng))
    broken = str(folder / "broken.jpg")
    with open(broken, "w") as f:
        f.write("<html>502 Bad Gateway</html>")
    return nozzle, empty, broken


def test_json_lines(images, tmp_path):
    nozzle, empty, _ = images
    done = _run(nozzle, empty, "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    found, missing = (json.loads(line) for line in lines)
    assert set(found) == {"image", "found", "center", "radius", "score", "elapsed_ms"}
    assert found["image"] == nozzle and found["found"] is True
    assert found["center"] == pytest.approx(TRUTH, abs=0.1)
    assert found["radius"] == pytest.approx(14.0, abs=0.3)
    assert 0.5 <= found["score"] <= 1.0
    # Detection time only: far below the interpreter's start-up.
    assert 0 < found["elapsed_ms"] < 2000
    # This empty render is dim (its brightest parts reach 14 of 255), and
    # the miss says so.
    assert missing.pop("why").startswith("The picture is very dark")
    assert missing == {"image": empty, "found": False, "center": None, "radius": None,
                       "score": None, "elapsed_ms": missing["elapsed_ms"]}
    assert missing["elapsed_ms"] > 0


def test_text_output_and_unreadable_file(images, tmp_path):
    nozzle, empty, broken = images
    done = _run(nozzle, broken, str(tmp_path / "nothing.png"), empty)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(nozzle + ": nozzle at u=301.3")
    assert lines[1] == broken + ": error: not an image OpenCV can read"
    assert lines[2].endswith("nothing.png: error: no such file")
    assert lines[3].startswith(empty + ": no nozzle found")


def test_unreadable_file_in_json(images):
    _, _, broken = images
    record = json.loads(_run("--json", broken).stdout)
    assert record["found"] is False and record["center"] is None
    assert "error" in record


def test_annotate_writes_one_image_per_input(images, tmp_path):
    nozzle, empty, _ = images
    out = tmp_path / "annotated"
    done = _run("--annotate", str(out), "--json", nozzle, empty)
    assert done.returncode == 0, done.stderr
    written = sorted(os.listdir(out))
    assert written == ["empty.annotated.png", "nozzle.annotated.png"]
    original = cv2.imread(nozzle)
    drawn = cv2.imread(str(out / "nozzle.annotated.png"))
    assert drawn.shape == original.shape
    # The overlay changed pixels on the bore's outline.
    u, v = (int(round(c)) for c in TRUTH)
    ring = np.abs(drawn[v - 20:v + 21, u - 20:u + 21].astype(int) -
                  original[v - 20:v + 21, u - 20:u + 21].astype(int))
    assert ring.sum() > 0


def test_usage_errors():
    assert _run().returncode == 2
    assert _run("--min-radius", "50", "--max-radius", "10", "x.png").returncode == 2


def test_top_level_help_lists_every_command():
    for flag in ("--help", "-h"):
        result = subprocess.run([sys.executable, "-m", "ktamv_helper", flag],
                                capture_output=True, text=True, timeout=60,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert result.returncode == 0, result.stderr
        commands = [line.split()[0] for line in result.stdout.splitlines()[2:] if line.startswith("  ") and not line.startswith("   ")]
        assert commands == ["serve", "detect", "bench"], result.stdout
    bad = subprocess.run([sys.executable, "-m", "ktamv_helper", "detcet"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'detcet'" in bad.stderr


def test_defaults_are_the_printer_s_and_a_miss_says_why(tmp_path):
    # A zoomed camera's bore of 135 px (past the old fixed 120 px limit) is
    # found with the same range the [ktamv] section uses by default.
    rng = np.random.default_rng(0)
    zoomed = str(tmp_path / "zoomed.png")
    cv2.imwrite(zoomed, render_nozzle((640, 480), (321.3, 242.6), 135.0,
                                      random_look(rng, jpeg_quality=0,
                                                  second_circle=False), rng))
    blown = str(tmp_path / "blown.png")
    cv2.imwrite(blown, np.full((480, 640, 3), 255, np.uint8))
    found, missed = (json.loads(line) for line in
                     _run("--json", zoomed, blown).stdout.splitlines())
    assert found["center"] == pytest.approx((321.3, 242.6), abs=0.2)
    assert found["radius"] == pytest.approx(135.0, abs=1.5)
    assert missed["found"] is False
    assert "clipped at white" in missed["why"]
    text = _run(blown).stdout
    assert text.startswith(blown + ": no nozzle found (") and "lower the camera's exposure" in text
    # An explicit range still rules: 135 px is beyond --max-radius 120.
    assert json.loads(_run("--json", "--max-radius", "120", zoomed).stdout)["found"] is False


def test_a_bore_below_min_radius_says_which_setting_finds_it(tmp_path):
    from ktamv_helper.simulation.render import ring_light_look
    rng = np.random.default_rng(0)
    tiny = str(tmp_path / "tiny.png")
    cv2.imwrite(tiny, render_nozzle((320, 240), (161.3, 118.6), 2.6,
                                    ring_light_look(rng, blur_sigma=1.0, jpeg_quality=0), rng))
    missed = json.loads(_run("--json", tiny).stdout)
    assert missed["found"] is False
    assert missed["why"].startswith("a bore of 2.0 px radius is at (161.2, 118.6), "
                                    "below --min-radius 3: if that is the nozzle, use "
                                    "--min-radius 2")
    found = json.loads(_run("--json", "--min-radius", "2", tiny).stdout)
    assert found["center"] == pytest.approx((161.3, 118.6), abs=0.3)
