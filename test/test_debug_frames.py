"""Frames of failed detections: names, content, pruning and disk trouble."""

import datetime
import os
import types

import cv2
import numpy as np

from ktamv_helper import debug_frames


def frame(seed=0):
    rng = np.random.default_rng(seed)
    image = np.full((240, 320, 3), 100, np.uint8)
    cv2.circle(image, (170, 110), 25, (30, 30, 30), -1)
    return cv2.GaussianBlur(image + rng.integers(0, 20, image.shape, dtype=np.uint8),
                            (3, 3), 0)


def at(second, millisecond=0):
    return datetime.datetime(2026, 11, 25, 21, 35, second, millisecond * 1000)


def test_saves_raw_and_annotated_with_a_name_that_says_when_and_why(tmp_path):
    folder = tmp_path / "not" / "yet" / "there"
    image = frame()
    det = types.SimpleNamespace(center=(170.0, 110.0), radius=25.0, score=0.4)
    paths = debug_frames.save_failure(str(folder), 5, image, "nozzle_not_found",
                                      detection=det, now=at(1, 123))
    names = [os.path.basename(p) for p in paths]
    assert names == ["20261125-213501.123-nozzle_not_found-raw.jpg",
                     "20261125-213501.123-nozzle_not_found-annotated.jpg"]
    raw, annotated = (cv2.imread(p) for p in paths)
    assert raw.shape == annotated.shape == image.shape
    assert np.abs(raw.astype(int) - image).mean() < 3      # the frame itself
    assert np.abs(annotated.astype(int) - image).mean() > 3  # plus the overlay
    # The annotation shows the yellow crosshair at the image centre.
    centre_column = annotated[150:, 159:161].astype(int)
    assert (centre_column[..., 2] - centre_column[..., 0]).mean() > 80


def test_keeps_only_the_newest_failures_and_nothing_else_is_touched(tmp_path):
    folder = str(tmp_path)
    others = ["notes.txt", "photo.jpg", "20261125-213500.000-x-raw.jpg.bak",
              "20261125-213500.000-Upper-raw.jpg"]
    for name in others:
        (tmp_path / name).write_text("mine")
    (tmp_path / "20261125-213500.000-dir-raw.jpg").mkdir()
    for second in range(1, 7):
        debug_frames.save_failure(folder, 3, frame(second), "no_consensus",
                                  now=at(second))
    kept = sorted(n for n in os.listdir(folder) if n not in others
                  and not (tmp_path / n).is_dir())
    assert kept == sorted("20261125-2135%02d.000-no_consensus-%s.jpg" % (s, k)
                          for s in (4, 5, 6) for k in ("raw", "annotated"))
    for name in others:
        assert (tmp_path / name).read_text() == "mine"
    assert (tmp_path / "20261125-213500.000-dir-raw.jpg").is_dir()


def test_two_failures_in_the_same_millisecond_both_kept(tmp_path):
    first = debug_frames.save_failure(str(tmp_path), 5, frame(1), "nozzle_not_found",
                                      now=at(2, 5))
    second = debug_frames.save_failure(str(tmp_path), 5, frame(2), "nozzle_not_found",
                                       now=at(2, 5))
    assert len(first) == len(second) == 2
    assert set(first).isdisjoint(second)
    assert os.path.basename(second[0]) == \
        "20261125-213502.005_1-nozzle_not_found-raw.jpg"
    assert len(os.listdir(tmp_path)) == 4


def test_reason_is_made_safe_for_a_file_name(tmp_path):
    paths = debug_frames.save_failure(str(tmp_path), 2, frame(),
                                      "No consensus: ../../etc!", now=at(3))
    assert [os.path.dirname(p) for p in paths] == [str(tmp_path)] * 2
    assert os.path.basename(paths[0]) == \
        "20261125-213503.000-no_consensus_etc-raw.jpg"


def test_disk_errors_are_logged_not_raised(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert debug_frames.save_failure(str(blocker / "sub"), 3, frame(),
                                     "nozzle_not_found") == []
    assert "could not save" in caplog.text
    # A frame OpenCV cannot encode: nothing written, nothing raised, no
    # half-written file left behind.
    empty = np.zeros((0, 0, 3), np.uint8)
    assert debug_frames.save_failure(str(tmp_path / "d"), 3, empty,
                                     "camera_bad_frame") == []
    assert os.listdir(tmp_path / "d") == []
