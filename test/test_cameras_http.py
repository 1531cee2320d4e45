"""HTTP cameras against real servers on 127.0.0.1: ffmpeg's MJPEG stream, a
Python snapshot server, and every way a camera can fail."""

import io
import time

import cv2
import numpy as np
import pytest

from conftest import draw_nozzle
from ktamv_helper.cameras import open_camera
from ktamv_helper.cameras.http import (MjpegCamera, SnapshotCamera,
                                       decode_image, image_header_size,
                                       iter_mjpeg_parts)
from ktamv_helper.errors import HelperError

# Generous bounds: the machine is shared and loaded.
SLACK = 3.0


def jpeg(image, quality=90):
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def with_sof_size(data, width, height):
    """A JPEG whose start-of-frame header claims another size."""
    index = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[index + 5:index + 7] = height.to_bytes(2, "big")
    patched[index + 7:index + 9] = width.to_bytes(2, "big")
    return bytes(patched)


def expect_error(code, call, *args, **kwargs):
    with pytest.raises(HelperError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def mean_abs_diff(a, b):
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


# ---------------------------------------------------------------- MJPEG (ffmpeg)

def test_ffmpeg_stream_delivers_fresh_decoded_frames(mjpeg_server, nozzle_png):
    server = mjpeg_server(nozzle_png, fps=10)
    camera = open_camera(server.url, timeout=5.0)
    try:
        assert isinstance(camera, MjpegCamera)
        expected = draw_nozzle()
        stamps = []
        for _ in range(4):
            asked = time.monotonic()
            frame = camera.get_frame(not_before=asked, timeout=5.0)
            assert frame.timestamp >= asked
            assert frame.size == (640, 480)
            assert frame.image.dtype == np.uint8 and frame.image.shape == (480, 640, 3)
            # The picture is the served one, up to JPEG loss.
            assert mean_abs_diff(frame.image, expected) < 3.0
            stamps.append(frame.timestamp)
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
    finally:
        camera.close()


def test_stream_never_returns_frames_older_than_not_before(mjpeg_server,
                                                           nozzle_png):
    server = mjpeg_server(nozzle_png, fps=10)
    camera = open_camera(server.url, timeout=5.0)
    try:
        camera.get_frame(timeout=5.0)          # the stream is flowing
        for delay in (0.0, 0.15, 0.35):
            not_before = time.monotonic() + delay
            frame = camera.get_frame(not_before=not_before, timeout=5.0)
            assert frame.timestamp >= not_before
        # A not_before far in the future cannot be met: a timeout, on time.
        started = time.monotonic()
        error = expect_error("camera_timeout", camera.get_frame,
                             not_before=started + 60, timeout=0.5)
        assert time.monotonic() - started < 0.5 + SLACK
        assert "newer than the requested time" in error.message
    finally:
        camera.close()


def test_stream_reconnects_after_the_server_restarts(mjpeg_server, nozzle_png):
    server = mjpeg_server(nozzle_png, fps=10)
    camera = open_camera(server.url, timeout=3.0)
    try:
        camera.get_frame(timeout=5.0)
        assert camera.connections == 1
        server.stop()
        stopped = time.monotonic()
        # While the server is down the camera reports why, without hanging.
        time.sleep(0.5)
        error = expect_error("camera_unreachable", camera.get_frame,
                             not_before=time.monotonic(), timeout=0.5)
        assert server.url in error.message
        server.start()
        frame = camera.get_frame(not_before=time.monotonic(), timeout=15.0)
        assert frame.timestamp > stopped
        assert camera.connections == 2
    finally:
        camera.close()


def test_close_stops_the_reader_promptly(mjpeg_server, nozzle_png):
    server = mjpeg_server(nozzle_png, fps=10)
    camera = open_camera(server.url, timeout=5.0)
    camera.get_frame(timeout=5.0)
    started = time.monotonic()
    camera.close()
    assert time.monotonic() - started < 1.0
    assert not camera._thread.is_alive()
    expect_error("camera_unreachable", camera.get_frame, timeout=0.2)


# ---------------------------------------------------------------- MJPEG (scripted)

def test_stream_without_part_lengths_and_a_corrupt_part(http_camera, nozzle_jpeg):
    corrupt = b"\xff\xd8" + bytes(range(256)) * 8 + b"\xff\xd9"
    url = http_camera.route("/stream", parts=[nozzle_jpeg, corrupt, nozzle_jpeg],
                            part_length=False, part_interval=0.3, repeat=3,
                            boundary="--myboundary")
    camera = open_camera(url, timeout=5.0)
    try:
        assert isinstance(camera, MjpegCamera)
        seen_good = 0
        for _ in range(3):
            frame = camera.get_frame(not_before=time.monotonic(), timeout=5.0)
            assert mean_abs_diff(frame.image, draw_nozzle()) < 3.0
            seen_good += 1
        assert seen_good == 3
    finally:
        camera.close()


def test_stream_of_only_corrupt_parts_reports_a_bad_frame(http_camera):
    corrupt = b"\xff\xd8" + b"\x00garbage" * 100 + b"\xff\xd9"
    url = http_camera.route("/stream", parts=[corrupt], part_interval=0.1,
                            repeat=30)
    camera = open_camera(url, timeout=5.0)
    try:
        error = expect_error("camera_bad_frame", camera.get_frame, timeout=1.0)
        assert "not a decodable image" in error.message
    finally:
        camera.close()


def test_stalled_stream_times_out_with_the_cause(http_camera, nozzle_jpeg):
    url = http_camera.route("/stream", parts=[nozzle_jpeg], hold=30,
                            then_hang=True)
    camera = open_camera(url, timeout=1.0)
    try:
        camera.get_frame(timeout=3.0)
        started = time.monotonic()
        error = expect_error("camera_timeout", camera.get_frame,
                             not_before=time.monotonic(), timeout=2.5)
        assert time.monotonic() - started < 2.5 + SLACK
        # The reader noticed the silent stream (and then the silent
        # reconnection attempt) and says so.
        assert ("sent nothing for 1.0 s" in error.message
                or "did not answer within 1.0 s" in error.message)
    finally:
        camera.close()


def test_iter_mjpeg_parts_handles_lengths_sniffed_boundaries_and_endings():
    a, b = b"\xff\xd8first\r\n--not-a-boundary\xff\xd9", b"\xff\xd8second\xff\xd9"
    body = (b"preamble\r\n--xyz\r\nContent-Type: image/jpeg\r\n\r\n" + a
            + b"\r\n--xyz\r\nContent-Type: image/jpeg\r\nContent-Length: "
            + str(len(b)).encode() + b"\r\n\r\n" + b + b"\r\n--xyz--\r\n")
    clock = iter(range(100)).__next__
    for boundary in ("xyz", '"xyz"', None):
        parts = list(iter_mjpeg_parts(io.BytesIO(body), boundary, clock=clock))
        assert [p[1] for p in parts] == [a, b]
    # A stream cut mid-part yields only the complete parts.
    cut = body[:body.index(b"second") + 3]
    assert [p[1] for p in iter_mjpeg_parts(io.BytesIO(cut), "xyz")] == [a]


def test_iter_mjpeg_parts_refuses_absurd_part_lengths():
    body = (b"--b\r\nContent-Length: 999999999999\r\n\r\n" + b"x" * 100)
    with pytest.raises(HelperError) as info:
        list(iter_mjpeg_parts(io.BytesIO(body), "b"))
    assert info.value.code == "camera_bad_frame"


# ---------------------------------------------------------------- snapshots

def test_snapshot_camera_fetches_a_fresh_image_per_frame(http_camera):
    camera = open_camera(http_camera.url("/snapshot.jpg"), timeout=5.0)
    try:
        assert isinstance(camera, SnapshotCamera)
        hits = http_camera.hits("/snapshot.jpg")
        before = time.monotonic()
        first = camera.get_frame(timeout=5.0)
        second = camera.get_frame(not_before=time.monotonic() + 0.2, timeout=5.0)
        assert before <= first.timestamp < second.timestamp
        assert second.timestamp - first.timestamp >= 0.2
        assert http_camera.hits("/snapshot.jpg") == hits + 2
        assert first.size == (640, 480)
        assert mean_abs_diff(first.image, draw_nozzle()) < 3.0
    finally:
        camera.close()


def test_png_snapshot_and_a_generic_content_type(http_camera):
    ok, png = cv2.imencode(".png", draw_nozzle())
    url = http_camera.route("/snap", png.tobytes(),
                            content_type="application/octet-stream")
    camera = open_camera(url, timeout=5.0)
    frame = camera.get_frame(timeout=5.0)
    assert isinstance(camera, SnapshotCamera)
    assert np.array_equal(frame.image, draw_nozzle())


# ---------------------------------------------------------------- failures

def test_refused_connection_is_unreachable_quickly(free_port):
    url = "http://127.0.0.1:%d/snapshot" % free_port()
    started = time.monotonic()
    error = expect_error("camera_unreachable", open_camera, url, timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert "Nothing answers at %s" % url in error.message
    assert "nozzle_cam_url" in error.message


def test_a_camera_that_never_answers_times_out_on_time(silent_server):
    url, _ = silent_server
    started = time.monotonic()
    error = expect_error("camera_timeout", open_camera, url, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.0 + SLACK
    assert "did not answer within 1.0 s" in error.message


def test_a_slow_snapshot_times_out_within_the_frame_timeout(http_camera):
    camera = open_camera(http_camera.url("/snapshot.jpg"), timeout=5.0)
    http_camera.route("/snapshot.jpg", b"", delay=10)
    started = time.monotonic()
    expect_error("camera_timeout", camera.get_frame, timeout=0.8)
    assert time.monotonic() - started < 0.8 + SLACK


@pytest.mark.parametrize("status", [404, 500, 503])
def test_http_error_status(http_camera, status):
    url = http_camera.route("/cam", b"<html>no</html>", status=status,
                            content_type="text/html")
    error = expect_error("camera_http_error", open_camera, url, timeout=5.0)
    assert error.details["status"] == status
    assert "HTTP %d" % status in error.message


def test_html_page_is_a_bad_frame(http_camera):
    page = b"<!DOCTYPE html><html><body>Mainsail</body></html>"
    url = http_camera.route("/webcam/", page, content_type="text/html")
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "web page" in error.message and "action=snapshot" in error.message
    # Mislabelled as a JPEG, the page is still refused.
    url = http_camera.route("/lying", page, content_type="image/jpeg")
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "web page or text" in error.message


def test_truncated_and_cut_off_jpegs_are_bad_frames(http_camera, nozzle_jpeg):
    half = nozzle_jpeg[:len(nozzle_jpeg) // 2]
    url = http_camera.route("/truncated", half)
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "truncated JPEG" in error.message
    # Content-Length promises more than arrives before the server closes.
    url = http_camera.route("/cut", half, content_length=len(nozzle_jpeg))
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "cut off" in error.message


def test_zero_length_body_is_a_bad_frame(http_camera):
    url = http_camera.route("/empty", b"")
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "empty image (0 bytes)" in error.message


def test_absurd_and_tiny_frames_are_bad_frames(http_camera, nozzle_jpeg):
    huge = with_sof_size(nozzle_jpeg, 60000, 60000)
    assert image_header_size(huge) == (60000, 60000)
    url = http_camera.route("/huge", huge)
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "60000x60000" in error.message
    tiny = jpeg(np.zeros((4, 4, 3), np.uint8))
    url = http_camera.route("/tiny", tiny)
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "4x4" in error.message
    zero = with_sof_size(nozzle_jpeg, 640, 0)
    error = expect_error("camera_bad_frame", decode_image, zero, "x")
    assert "640x0" in error.message


def test_corrupt_jpeg_is_a_bad_frame(http_camera):
    corrupt = b"\xff\xd8" + bytes(range(256)) * 20 + b"\xff\xd9"
    url = http_camera.route("/corrupt", corrupt)
    error = expect_error("camera_bad_frame", open_camera, url, timeout=5.0)
    assert "not a decodable image" in error.message


def test_image_header_size_reads_jpeg_and_png(nozzle_jpeg):
    assert image_header_size(nozzle_jpeg) == (640, 480)
    ok, png = cv2.imencode(".png", np.zeros((33, 71, 3), np.uint8))
    assert image_header_size(png.tobytes()) == (71, 33)
    assert image_header_size(b"<html>") is None


def test_unknown_host_is_unreachable():
    error = expect_error("camera_unreachable", open_camera,
                         "http://camera.invalid/snapshot", timeout=3.0)
    assert "camera.invalid" in error.message


def test_credentials_in_the_url_are_sent_and_never_shown(http_camera,
                                                         nozzle_jpeg):
    import base64
    secret = "Basic " + base64.b64encode(b"klipper:s3cret word").decode()
    url = http_camera.route("/private.jpg", nozzle_jpeg, auth=secret)
    error = expect_error("camera_http_error", open_camera, url, timeout=5.0)
    assert error.details["status"] == 401 and "user:password@" in error.message
    with_user = url.replace("http://", "http://klipper:s3cret%20word@")
    camera = open_camera(with_user, timeout=5.0)
    assert camera.url == url
    assert camera.get_frame(timeout=5.0).size == (640, 480)
    wrong = url.replace("http://", "http://klipper:nope@")
    error = expect_error("camera_http_error", open_camera, wrong, timeout=5.0)
    assert "nope" not in error.message and "check the user name" in error.message


def test_iter_mjpeg_parts_reads_the_layouts_of_common_streamers():
    one, two = b"\xff\xd8one\r\n\xff\xd9", b"\xff\xd8two\xff\xd9"

    def part(body, extra=b""):
        return (b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n" % len(body)
                + extra + b"\r\n" + body)

    # mjpg-streamer: a CRLF and the boundary first, each part followed by
    # CRLF + boundary; ustreamer: boundary before each part, X-Timestamp.
    mjpg_streamer = (b"\r\n--boundarydonotcross\r\n"
                     + part(one, b"X-Timestamp: 12.5\r\n")
                     + b"\r\n--boundarydonotcross\r\n"
                     + part(two, b"X-Timestamp: 12.6\r\n")
                     + b"\r\n--boundarydonotcross\r\n")
    ustreamer = (b"--boundarydonotcross\r\n" + part(one, b"X-Timestamp: 1.0\r\n")
                 + b"\r\n--boundarydonotcross\r\n" + part(two) + b"\r\n")
    for body in (mjpg_streamer, ustreamer):
        parts = list(iter_mjpeg_parts(io.BytesIO(body), "boundarydonotcross"))
        assert [p[1] for p in parts] == [one, two]


def test_x_timestamp_becomes_the_frames_capture_time(http_camera, nozzle_jpeg):
    # ustreamer / camera-streamer stamp each part with the capture time
    # (here 0.25 s before it is sent, on the wall clock).
    url = http_camera.route("/stream", parts=[nozzle_jpeg], repeat=50,
                            part_interval=0.05)
    import conftest
    original = conftest._CameraHandler._stream

    def stream(self, route):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace;"
                         "boundary=frame")
        self.end_headers()
        for _ in range(route.repeat):
            part = route.parts[0]
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                             b"Content-Length: %d\r\nX-Timestamp: %.6f\r\n"
                             b"\r\n" % (len(part), time.time() - 0.25)
                             + part + b"\r\n")
            self.wfile.flush()
            time.sleep(route.part_interval)

    conftest._CameraHandler._stream = stream
    try:
        camera = open_camera(url, timeout=2.0)
        try:
            frame = camera.get_frame(not_before=time.monotonic(), timeout=3.0)
        finally:
            camera.close()
    finally:
        conftest._CameraHandler._stream = original
    assert frame.captured is not None
    assert frame.timestamp - frame.captured == pytest.approx(0.25, abs=0.05)
