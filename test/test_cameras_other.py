"""file: and V4L2 camera sources, and picking a source from the URL."""

import os
import time

import cv2
import numpy as np
import pytest

from ktamv_helper.cameras import camera_kind, open_camera
from ktamv_helper.cameras.files import FileCamera, path_from_url
from ktamv_helper.errors import HelperError


def solid(value, size=(64, 48)):
    return np.full((size[1], size[0], 3), value, np.uint8)


def expect_error(code, call, *args, **kwargs):
    with pytest.raises(HelperError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


@pytest.mark.parametrize("url, kind", [
    ("http://printer.local/webcam/?action=stream", "http"),
    ("HTTPS://cam/snapshot", "http"),
    ("/dev/video0", "v4l2"),
    ("2", "v4l2"),
    ("file:/tmp/x.png", "file"),
    ("sim://?seed=3", "sim"),
])
def test_camera_kind(url, kind):
    assert camera_kind(url) == kind


@pytest.mark.parametrize("url", ["", "   ", "ftp://cam/x", "camera", "rtsp://cam"])
def test_unsupported_urls_are_invalid_params(url):
    error = expect_error("invalid_params", camera_kind, url)
    assert "http" in error.message and "sim://" in error.message


def test_public_url_hides_passwords():
    from ktamv_helper.cameras import public_url
    assert (public_url("http://me:pw@cam:8080/s?action=stream")
            == "http://me:***@cam:8080/s?action=stream")
    assert public_url("http://cam/s") == "http://cam/s"
    assert public_url("/dev/video0") == "/dev/video0"


def test_path_from_url_forms(tmp_path):
    assert path_from_url("file:/a/b c.png") == "/a/b c.png"
    assert path_from_url("file:///a/b%20c.png") == "/a/b c.png"
    assert path_from_url("file:rel/x.png") == "rel/x.png"


def test_file_camera_single_image_gives_fresh_frames(tmp_path):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), solid(77))
    camera = open_camera("file:%s" % path)
    assert isinstance(camera, FileCamera)
    first = camera.get_frame()
    second = camera.get_frame()
    assert first.size == (64, 48) and first.image.shape == (48, 64, 3)
    assert int(first.image[0, 0, 0]) == 77
    assert second.timestamp > first.timestamp
    assert first.image is not second.image


def test_file_camera_folder_cycles_in_name_order(tmp_path):
    # Written out of order, with a non-image file that must be skipped.
    for name, value in (("b.png", 20), ("a.jpg", 10), ("c.bmp", 30)):
        cv2.imwrite(str(tmp_path / name), solid(value))
    (tmp_path / "notes.txt").write_text("not an image")
    camera = open_camera("file:%s/" % tmp_path)
    values = [int(round(camera.get_frame().image.mean())) for _ in range(5)]
    assert values == [10, 20, 30, 10, 20]


def test_file_camera_grey_and_alpha_images_become_bgr(tmp_path):
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((40, 50), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.full((40, 50, 4), 60, np.uint8))
    camera = open_camera("file:%s" % tmp_path)
    for expected in (90, 60):
        frame = camera.get_frame()
        assert frame.image.shape == (40, 50, 3)
        assert int(frame.image[5, 5, 1]) == expected


def test_file_camera_honours_not_before(tmp_path):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), solid(5))
    camera = FileCamera("file:%s" % path)
    not_before = time.monotonic() + 0.2
    frame = camera.get_frame(not_before=not_before, timeout=2.0)
    assert frame.timestamp >= not_before
    started = time.monotonic()
    expect_error("camera_timeout", camera.get_frame,
                 not_before=started + 100, timeout=0.3)
    assert time.monotonic() - started < 2.0


def test_file_camera_failures(tmp_path):
    error = expect_error("camera_unreachable", open_camera,
                         "file:%s/missing.png" % tmp_path)
    assert "missing.png" in error.message
    empty = tmp_path / "empty"
    empty.mkdir()
    error = expect_error("camera_unreachable", open_camera, "file:%s" % empty)
    assert "no images" in error.message
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    camera = open_camera("file:%s" % broken)
    expect_error("camera_bad_frame", camera.get_frame)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), solid(1, size=(3, 3)))
    error = expect_error("camera_bad_frame", open_camera("file:%s" % tiny).get_frame)
    assert "3x3" in error.message


def test_closed_file_camera_refuses_frames(tmp_path):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), solid(5))
    camera = open_camera("file:%s" % path)
    camera.close()
    expect_error("camera_unreachable", camera.get_frame)


def _unused_video_index():
    for index in range(90, 200):
        if not os.path.exists("/dev/video%d" % index):
            return index
    pytest.skip("no free /dev/video index")


@pytest.mark.parametrize("form", ["path", "index"])
def test_missing_video_device_is_unreachable_quickly(form):
    index = _unused_video_index()
    url = "/dev/video%d" % index if form == "path" else str(index)
    started = time.monotonic()
    error = expect_error("camera_unreachable", open_camera, url, timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert "/dev/video%d" % index in error.message


def test_a_file_that_is_not_a_capture_device_is_unreachable(tmp_path):
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    # Only paths under /dev/ are devices; this one reaches OpenCV and fails.
    from ktamv_helper.cameras.v4l2 import V4l2Camera
    started = time.monotonic()
    error = expect_error("camera_unreachable", V4l2Camera, str(fake), 2.0)
    assert time.monotonic() - started < 5.0
    assert "OpenCV cannot open" in error.message


def test_sim_url_opens_the_simulated_camera():
    camera = open_camera("sim://?seed=1&width=320&height=240")
    try:
        frame = camera.get_frame(timeout=5.0)
        assert frame.size == (320, 240)
        assert hasattr(camera, "truth")
    finally:
        camera.close()


class _VideoFileCamera:
    """V4l2Camera reading a real MJPEG video file through OpenCV instead of a
    device (none exists here): the reader thread, grab/retrieve on demand,
    stamping and reopening are the production code."""

    @staticmethod
    def make(path):
        from ktamv_helper.cameras.v4l2 import V4l2Camera

        class VideoFileCamera(V4l2Camera):
            opened = 0

            def _open_capture(self):
                type(self).opened += 1
                capture = cv2.VideoCapture(self._path)
                if not capture.isOpened():
                    raise HelperError("camera_unreachable", "cannot open")
                return capture

        return VideoFileCamera(str(path), 5.0)


@pytest.fixture
def nozzle_video(tmp_path):
    from conftest import draw_nozzle
    path = tmp_path / "nozzle.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30,
                             (640, 480))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG video")
    for _ in range(20):
        writer.write(draw_nozzle())
    writer.release()
    return path


def test_capture_reader_delivers_fresh_frames_and_reopens(nozzle_video):
    from conftest import draw_nozzle
    camera = _VideoFileCamera.make(nozzle_video)
    try:
        for _ in range(5):
            not_before = time.monotonic()
            frame = camera.get_frame(not_before=not_before, timeout=5.0)
            assert frame.timestamp >= not_before
            # A file's positions (0.033 s ...) fit no clock: arrival counts.
            assert frame.captured is None
            assert frame.size == (640, 480)
            assert float(np.mean(np.abs(frame.image.astype(int)
                                        - draw_nozzle().astype(int)))) < 3.0
        # The 20-frame file ends quickly; the reader reopens it and goes on.
        deadline = time.monotonic() + 20
        while type(camera).opened < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert type(camera).opened >= 3
        frame = camera.get_frame(not_before=time.monotonic(), timeout=5.0)
        assert frame.size == (640, 480)
    finally:
        started = time.monotonic()
        camera.close()
        assert time.monotonic() - started < 2.0
    expect_error("camera_unreachable", camera.get_frame, timeout=0.2)


def test_camera_stamps_of_either_clock_become_monotonic_capture_times():
    from ktamv_helper.freshness import camera_stamp_to_monotonic
    arrival = time.monotonic()
    # V4L2 buffers and ustreamer: CLOCK_MONOTONIC seconds.
    assert camera_stamp_to_monotonic(arrival - 0.04, arrival) == \
        pytest.approx(arrival - 0.04)
    # Some streamers send the wall clock.
    assert camera_stamp_to_monotonic(time.time() - 0.1, arrival) == \
        pytest.approx(arrival - 0.1, abs=0.01)
    # A video file's position, a capture after arrival, or a stamp far
    # in the past: not a capture time.
    for stamp in (0.033, arrival + 1.0, arrival - 30.0, float("nan"), "x"):
        assert camera_stamp_to_monotonic(stamp, arrival) is None
