"""The preview server with real clients: ffmpeg/ffprobe, raw sockets, urllib.

Everything runs on 127.0.0.1 on ports the OS picks. Time bounds are
generous: these tests must pass on a loaded two-core machine.
"""

import contextlib
import http.client
import json
import socket
import struct
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from ktamv_helper import annotate as an
from ktamv_helper import preview as pv
from ktamv_helper.cameras.base import Frame
from ktamv_helper.preview import PreviewServer

DETECTION = types.SimpleNamespace(center=(400.3, 300.2), radius=40.0, score=0.9)


def scene(width=640, height=480, level=110):
    image = np.full((height, width, 3), level, np.uint8)
    cv2.circle(image, (400, 300), 38, (25, 25, 25), -1)
    return image


@pytest.fixture
def server():
    preview = PreviewServer("127.0.0.1", 0, max_fps=10)
    preview.start()
    yield preview
    preview.close()


def port_of(preview):
    return int(preview.status()["url"].rsplit(":", 1)[1].strip("/"))


class Publisher:
    """Publishes numbered frames from a thread, like the detector would."""

    def __init__(self, preview, hz=30.0, image=None, **kwargs):
        self.preview, self.hz = preview, hz
        self.image = scene() if image is None else image
        self.kwargs = kwargs
        self.count = 0
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            self.preview.publish(self.image, DETECTION, tolerance_px=5.0,
                                 status_lines=["frame %d" % self.count],
                                 **self.kwargs)
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += 1
            self._stop.wait(1.0 / self.hz)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


class MjpegClient:
    """A minimal MJPEG reader on a raw socket (no library hides anything)."""

    def __init__(self, port, path="/stream", host="127.0.0.1", rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect((host, port))
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n"
                           % (path, host)).encode())
        self.file = self.sock.makefile("rb")
        self.status = self.file.readline().decode()
        self.headers = self._headers()
        content_type = self.headers.get("content-type", "")
        self.boundary = content_type.split("boundary=", 1)[-1].strip()

    def _headers(self):
        headers = {}
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()

    def read_part(self):
        marker = ("--" + self.boundary).encode()
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("stream ended")
            if line.strip() == marker:
                break
        headers = self._headers()
        data = self.file.read(int(headers["content-length"]))
        return headers, data

    def abort(self):
        """Close with a TCP reset, like a browser tab killed mid-frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
        self.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()


def get(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def decode(data):
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def yellow_fraction(image, column):
    strip = image[int(image.shape[0] * 0.6):, column].astype(int)
    return np.mean((strip[:, 2] > 180) & (strip[:, 1] > 180) & (strip[:, 0] < 110))


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---------------------------------------------------------------- real clients

def test_ffprobe_sees_an_mjpeg_stream(server):
    with Publisher(server):
        result = subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0",
             "-show_entries", "stream=codec_name,width,height", "-of", "json",
             server.status()["stream_url"]],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    stream = json.loads(result.stdout)["streams"][0]
    assert stream == {"codec_name": "mjpeg", "width": 640, "height": 480}


@pytest.mark.parametrize("path", ["stream", "?action=stream"])
def test_ffmpeg_decodes_annotated_frames(server, tmp_path, path):
    url = server.status()["url"] + path
    with Publisher(server):
        result = subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", url, "-frames:v", "3",
             "-f", "image2", str(tmp_path / "frame%d.png")],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for index in (1, 2, 3):
        frame = cv2.imread(str(tmp_path / ("frame%d.png" % index)))
        assert frame.shape == (480, 640, 3)
        # Yellow crosshair through the image centre (u = 319.5).
        assert yellow_fraction(frame, 319) > 0.5
        assert yellow_fraction(frame, 100) < 0.05
        # The bore is 34 px off centre with a 5 px tolerance: orange ring at
        # radius 40 around the detected centre.
        ys, xs = np.nonzero(np.all(np.abs(frame.astype(int)
                                          - an.OFF_TARGET_COLOR) < 70, axis=2))
        distances = np.hypot(xs - 400.3, ys - 300.2)
        assert np.sum(np.abs(distances - 40.0) < 2) > 100


def test_stream_parts_are_well_formed_jpegs(server):
    with Publisher(server):
        client = MjpegClient(port_of(server))
        try:
            assert client.status.split()[1] == "200"
            assert client.headers["content-type"].startswith(
                "multipart/x-mixed-replace;boundary=")
            assert "no-cache" in client.headers["cache-control"]
            seen = set()
            for _ in range(4):
                headers, data = client.read_part()
                assert headers["content-type"] == "image/jpeg"
                assert decode(data).shape == (480, 640, 3)
                seen.add(data)
            assert len(seen) >= 2  # frames change as they are published
        finally:
            client.close()


# ------------------------------------------------------------------ endpoints

@pytest.mark.parametrize("path", ["snapshot", "?action=snapshot",
                                  "snapshot?t=1764106000"])
def test_snapshot_paths(server, path):
    with Publisher(server):
        status, headers, body = get(server.status()["url"] + path)
    assert status == 200
    assert headers["Content-Type"] == "image/jpeg"
    assert int(headers["Content-Length"]) == len(body)
    image = decode(body)
    assert image.shape == (480, 640, 3)
    assert yellow_fraction(image, 319) > 0.5


def test_placeholder_before_the_first_frame(server):
    status, _, body = get(server.status()["snapshot_url"])
    assert status == 200
    image = decode(body)
    assert image.shape == (480, 640, 3)
    assert yellow_fraction(image, 319) == 0  # no crosshair: nothing to align
    white = np.all(image > 200, axis=2)
    assert white.sum() > 100                 # "waiting for camera"


def test_page_head_404_and_405(server):
    url = server.status()["url"]
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<img src="stream"' in body
    for path in ("favicon.ico", "stream/x", "?action=bogus", "snapshots",
                 "../etc/passwd"):
        assert get(url + path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = get(url + "snapshot", method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD"
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server),
                                            timeout=20)
    connection.request("HEAD", "/snapshot")
    response = connection.getresponse()
    assert response.status == 200 and int(response.headers["Content-Length"]) > 0
    assert response.read() == b""
    connection.close()


# ------------------------------------------------------------ robustness

def test_ten_clients_at_once(server):
    errors, frames = [], {}

    def watch(index):
        try:
            client = MjpegClient(port_of(server))
            try:
                parts = [client.read_part()[1] for _ in range(3)]
                for data in parts:
                    decode(data)
                frames[index] = parts
            finally:
                client.close()
        except Exception as exc:  # reported below, with the index
            errors.append((index, repr(exc)))

    with Publisher(server):
        threads = [threading.Thread(target=watch, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    assert sorted(frames) == list(range(10))
    assert all(len(set(parts)) >= 2 for parts in frames.values())
    assert wait_for(lambda: server.status()["clients"] == 0)


def test_clients_that_vanish_mid_frame_do_not_hurt(server, monkeypatch):
    monkeypatch.setattr(pv, "STREAM_KEEPALIVE", 1.0)
    port = port_of(server)
    with Publisher(server):
        for _ in range(5):
            client = MjpegClient(port)
            client.file.read(1000)  # part of the first frame, then RST
            client.abort()
        healthy = MjpegClient(port)
        try:
            for _ in range(3):
                decode(healthy.read_part()[1])
            assert wait_for(lambda: server.status()["clients"] == 1)
        finally:
            healthy.close()
    assert wait_for(lambda: server.status()["clients"] == 0)


def test_a_stalled_client_does_not_stall_others_or_the_detector():
    preview = PreviewServer("127.0.0.1", 0, max_fps=10)
    preview.start()
    # Noise compresses badly: ~1 MB per frame fills any socket buffer fast.
    noisy = np.random.default_rng(1).integers(0, 256, (720, 1280, 3),
                                              dtype=np.uint8)
    try:
        with Publisher(preview, image=noisy) as publisher:
            stalled = MjpegClient(port_of(preview), rcvbuf=4096)  # never reads
            fast = MjpegClient(port_of(preview))
            started = time.monotonic()
            received = [fast.read_part() for _ in range(8)]
            elapsed = time.monotonic() - started
            assert preview.status()["clients"] == 2
            assert publisher.slowest < 0.5  # publish never waits for clients
        assert all(len(data) > 100000 for _, data in received)
        assert elapsed < 30
    finally:
        started = time.monotonic()
        preview.close()
        closing = time.monotonic() - started
        for client in (stalled, fast):
            client.close()
    assert closing < 3.0  # close() does not wait for the stalled client


def test_rate_is_bounded_and_nothing_is_encoded_for_nobody(monkeypatch):
    encodes = []
    real_imencode = cv2.imencode

    def counting_imencode(*args, **kwargs):
        encodes.append(time.monotonic())
        return real_imencode(*args, **kwargs)

    monkeypatch.setattr(pv.cv2, "imencode", counting_imencode)
    preview = PreviewServer("127.0.0.1", 0, max_fps=5)
    preview.start()
    try:
        with Publisher(preview, hz=100):
            time.sleep(1.0)
            assert encodes == []  # published ~100 frames, nobody watching
            client = MjpegClient(port_of(preview))
            try:
                client.read_part()
                started, parts = time.monotonic(), 0
                while time.monotonic() - started < 3.0:
                    client.read_part()
                    parts += 1
            finally:
                client.close()
        # 5 fps for 3 s: at most 15 (+2 for timing slack), and it does flow.
        assert 4 <= parts <= 17
        assert len(encodes) <= 5 * (time.monotonic() - started) + 4
    finally:
        preview.close()


def test_idle_costs_next_to_no_cpu(server):
    server.publish(scene(), DETECTION)
    client = MjpegClient(port_of(server))  # watching, but nothing new arrives
    try:
        client.read_part()
        cpu_before, wall_before = time.process_time(), time.monotonic()
        time.sleep(3.0)
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
    finally:
        client.close()
    assert cpu < 0.1 * wall, "idle preview used %.3f s CPU in %.1f s" % (cpu, wall)


# ----------------------------------------------------------- binding

def test_port_in_use_is_a_clear_oserror_and_the_first_server_keeps_going(server):
    port = port_of(server)
    second = PreviewServer("127.0.0.1", port, max_fps=10)
    with pytest.raises(OSError) as excinfo:
        second.start()
    message = str(excinfo.value)
    assert "already in use" in message and str(port) in message
    assert "preview_port" in message
    status = second.status()
    assert status["running"] is False and status["error"] == message
    assert status["url"] is None
    second.close()
    assert get(server.status()["snapshot_url"])[0] == 200


def test_binds_only_the_configured_address():
    for bound, other in (("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")):
        preview = PreviewServer(bound, 0, max_fps=5)
        preview.start()
        try:
            port = port_of(preview)
            assert preview.status()["url"] == "http://%s:%d/" % (bound, port)
            assert get("http://%s:%d/snapshot" % (bound, port))[0] == 200
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=5).close()
        finally:
            preview.close()


def test_close_is_fast_and_frees_the_port():
    preview = PreviewServer("127.0.0.1", 0, max_fps=10)
    preview.start()
    port = port_of(preview)
    preview.publish(scene())
    client = MjpegClient(port)
    client.read_part()
    started = time.monotonic()
    preview.close()
    assert time.monotonic() - started < 2.0
    assert preview.status()["running"] is False
    client.close()
    again = PreviewServer("127.0.0.1", port, max_fps=10)
    again.start()
    again.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        PreviewServer("127.0.0.1", 0, max_fps=0)
    with pytest.raises(OSError, match="preview_host"):
        PreviewServer("192.0.2.1", 0, max_fps=5).start()  # TEST-NET: not ours


# ------------------------------------------------------- continuous annotation

class Producer:
    def __init__(self, fail=False):
        self.calls = 0
        self.fail = fail

    def __call__(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("No frame from http://cam/stream within 5 s; "
                               "check the camera_url")
        image = np.full((120, 160, 3), 100, np.uint8)
        return image, types.SimpleNamespace(center=(79.5, 59.5), radius=10,
                                            score=1.0)


def test_continuous_only_reads_the_camera_while_someone_watches(server):
    producer = Producer()
    server.start_continuous(producer)
    assert server.status()["annotating"] is True
    time.sleep(1.0)
    assert producer.calls == 0
    client = MjpegClient(port_of(server))
    try:
        # The last frame (here the placeholder) may come first, then only
        # produced ones.
        shapes = [decode(client.read_part()[1]).shape for _ in range(5)]
        assert shapes[-3:] == [(120, 160, 3)] * 3
        calls_at, started = producer.calls, time.monotonic()
        time.sleep(2.0)
        rate = (producer.calls - calls_at) / (time.monotonic() - started)
        assert rate <= 10 * 1.3
        server.stop_continuous()
        assert server.status()["annotating"] is False
        time.sleep(0.5)
        stopped_at = producer.calls
        time.sleep(1.0)
        assert producer.calls == stopped_at
    finally:
        client.close()


def test_snapshot_during_continuous_shows_a_produced_frame(server):
    producer = Producer()
    server.start_continuous(producer)
    status, _, body = get(server.status()["snapshot_url"])
    assert status == 200 and decode(body).shape == (120, 160, 3)
    assert producer.calls >= 1


def test_continuous_camera_errors_are_shown_and_retried(server):
    producer = Producer(fail=True)
    server.start_continuous(producer)
    status, _, body = get(server.status()["snapshot_url"])
    assert status == 200
    image = decode(body)
    assert yellow_fraction(image, image.shape[1] // 2) == 0
    assert np.all(image > 200, axis=2).sum() > 200  # the error text
    client = MjpegClient(port_of(server))
    try:
        assert wait_for(lambda: producer.calls >= 2, timeout=10)
    finally:
        client.close()
    assert server.status()["running"] is True


def test_frame_age_is_shown_for_frames():
    with_age = PreviewServer._render(pv._Published(
        scene(), frame_time=time.monotonic() - 0.25))
    without = PreviewServer._render(pv._Published(scene()))
    text_rows = [np.nonzero(np.all(decode(j)[:, :200] > 200, axis=2).any(axis=1))[0]
                 for j in (with_age, without)]
    assert text_rows[1].size == 0 and text_rows[0].size > 5


def test_publish_accepts_a_frame_object(server):
    server.publish(Frame(scene(), time.monotonic()), DETECTION)
    status, _, body = get(server.status()["snapshot_url"])
    assert status == 200 and decode(body).shape == (480, 640, 3)


# ------------------------------------------------------------ inside Klipper

def klippy_section(port):
    from klippy_harness import HELPER_PYTHON
    return ("[ktamv]\nnozzle_cam_url: sim://?seed=3&camera_x=150&camera_y=150"
            "\nhelper_python: %s\npreview_port: %d\n" % (HELPER_PYTHON, port))


def test_klippy_port_in_use_is_reported_by_ktamv_test_and_in_the_log(tmp_path):
    from klippy_harness import KlippySession, printer_config
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with KlippySession(tmp_path, printer_config(klippy_section(port))) \
                as klippy:
            reply = klippy.send("KTAMV_TEST")
            assert reply.error is None, reply  # the camera works regardless
            assert "Preview port 127.0.0.1:%d is already in use" % port \
                in reply.text
            assert "got a 640x480 frame" in reply.text
            reply = klippy.send("KTAMV_START_PREVIEW")
            assert reply.error and "already in use" in reply.error
            assert "Klipper state: Ready" in klippy.send("STATUS").text
            log = klippy.log()
    assert "already in use" in log


def test_klippy_starts_and_stops_the_live_preview(tmp_path):
    from klippy_harness import KlippySession, printer_config
    probe = PreviewServer("127.0.0.1", 0, max_fps=1)
    probe.start()
    port = port_of(probe)
    probe.close()
    url = "http://127.0.0.1:%d/" % port
    with KlippySession(tmp_path, printer_config(klippy_section(port))) as klippy:
        assert klippy.send("G28").error is None
        assert klippy.send("G1 X150 Y150 F6000").error is None
        reply = klippy.send("KTAMV_TEST")
        assert reply.error is None, reply
        assert "Preview: %s (stream %sstream, snapshot %ssnapshot)" \
            % (url, url, url) in reply.text
        reply = klippy.send("KTAMV_START_PREVIEW")
        assert reply.error is None and url + "stream" in reply.text
        # Tool 0 sits over the camera: a detection ring (green on target,
        # orange off it) around the image centre. The first snapshot may
        # still be the KTAMV_TEST frame, drawn before the live view's first
        # detection, so look at snapshots for a few seconds.
        def ring_pixels():
            status, _, body = get(url + "snapshot")
            image = decode(body)
            assert status == 200 and image.shape == (480, 640, 3)
            assert yellow_fraction(image, 319) > 0.5
            ring = (np.all(np.abs(image.astype(int) - an.DETECTION_COLOR) < 70,
                           axis=2)
                    | np.all(np.abs(image.astype(int) - an.OFF_TARGET_COLOR)
                             < 70, axis=2))
            ys, xs = np.nonzero(ring[100:380, 180:460])
            seen.append(len(xs))
            return len(xs) > 50 and abs(np.median(xs) + 180 - 319.5) < 15
        seen = []
        assert wait_for(ring_pixels, timeout=10), seen
        reply = klippy.send("KTAMV_STOP_PREVIEW")
        assert reply.error is None
        # The server keeps serving the last frame.
        assert get(url + "snapshot")[0] == 200


def test_continuous_pauses_while_a_command_publishes(server):
    producer = Producer()
    server.start_continuous(producer)
    client = MjpegClient(port_of(server))
    try:
        assert wait_for(lambda: producer.calls >= 3)
        with Publisher(server, hz=20):       # a command's detector at work
            time.sleep(0.5)                  # (a produce may be in flight)
            during = producer.calls
            time.sleep(1.5)
            assert producer.calls <= during + 1
            # Viewers get the command's 640x480 frames (after the small
            # produced ones still queued in the socket buffers).
            shapes = [decode(client.read_part()[1]).shape for _ in range(3)]
            while shapes[-1] != (480, 640, 3) and len(shapes) < 200:
                shapes.append(decode(client.read_part()[1]).shape)
            assert shapes[-1] == (480, 640, 3)
        resumed_from = producer.calls
        assert wait_for(lambda: producer.calls >= resumed_from + 3, timeout=10)
    finally:
        client.close()


def test_a_frame_that_cannot_be_drawn_is_logged_once_not_per_frame(
        server, caplog):
    client = MjpegClient(port_of(server))
    try:
        client.read_part()                    # the placeholder
        bad = np.zeros((48, 64, 5), np.uint8)  # no such colour layout
        for _ in range(20):
            server.publish(bad)
            time.sleep(0.12)
        assert len([r for r in caplog.records
                    if "could not annotate" in r.getMessage()]) <= 2
        server.publish(scene(), DETECTION)
        for _ in range(3):
            data = client.read_part()[1]
            if decode(data).shape == (480, 640, 3):
                break
        assert decode(data).shape == (480, 640, 3)
    finally:
        client.close()


def test_set_status_draws_on_continuous_frames(server):
    server.set_status(tolerance_px=30.0, status_lines=["live preview"])
    server.start_continuous(Producer())
    status, _, body = get(server.status()["snapshot_url"])
    image = decode(body)
    assert status == 200 and image.shape == (120, 160, 3)
    ys, xs = np.nonzero(np.all(np.abs(image.astype(int) - an.TOLERANCE_COLOR)
                               < 80, axis=2))
    # 1 px lines at 160x120 lose much colour to JPEG; enough survive.
    assert len(xs) > 10
    assert np.median(np.hypot(xs - 79.5, ys - 59.5)) == pytest.approx(30, abs=1.5)


def test_klippy_failed_detection_keeps_frames_and_says_where(tmp_path):
    from klippy_harness import KlippySession, printer_config
    debug = tmp_path / "debug"
    section = klippy_section(0).replace("preview_port: 0\n", "") + \
        "debug_dir: %s\n" % debug
    with KlippySession(tmp_path / "klippy", printer_config(section)) as klippy:
        assert klippy.send("G28").error is None
        # 10 mm from the camera: no nozzle anywhere in the picture.
        assert klippy.send("G1 X160 Y150 F6000").error is None
        reply = klippy.send("KTAMV_SIMPLE_NOZZLE_POSITION")
        assert "Klipper state: Ready" in klippy.send("STATUS").text
    assert reply.error, reply
    saved = sorted(p.name for p in debug.iterdir())
    assert len(saved) == 2, saved
    assert saved[0].endswith("-nozzle_not_found-annotated.jpg")
    assert saved[1].endswith("-nozzle_not_found-raw.jpg")
    for name in saved:
        assert str(debug / name) in reply.error
    for advice in ("clean", "focus", "centre"):
        assert advice in reply.error
    raw = cv2.imread(str(debug / saved[1]))
    assert raw.shape == (480, 640, 3)


def test_connections_of_every_kind_are_capped(server):
    # Idle sockets that never send a request hold a handler thread each
    # (until CLIENT_IO_TIMEOUT): past MAX_CONNECTIONS they are turned away.
    host, port = "127.0.0.1", port_of(server)
    idle = []
    try:
        for _ in range(pv.MAX_CONNECTIONS):
            idle.append(socket.create_connection((host, port), timeout=5))
        deadline = time.monotonic() + 5
        while server._httpd._active < pv.MAX_CONNECTIONS:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen("http://%s:%d/snapshot" % (host, port),
                                   timeout=5)
        assert info.value.code == 503
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle:
            sock.close()
    # Once they are gone, snapshots are served again.
    deadline = time.monotonic() + 10
    while server._httpd._active > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    with urllib.request.urlopen("http://%s:%d/snapshot" % (host, port),
                                timeout=10) as answer:
        assert answer.status == 200
