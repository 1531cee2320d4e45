"""Shared pytest fixtures: real camera servers on 127.0.0.1.

Fixtures (use them from any test file):

``free_port``
    ``free_port()`` returns a TCP port on 127.0.0.1 that was free a moment ago.
``nozzle_png``
    Path of a 640×480 PNG with a bright collar and a dark bore centred at
    :data:`NOZZLE_CENTER` (radius :data:`NOZZLE_BORE_RADIUS`), for cameras
    that need some picture to serve.
``nozzle_jpeg``
    The same picture as JPEG bytes.
``mjpeg_server``
    Factory: ``mjpeg_server(image_path, fps=10, port=None)`` starts Debian's
    ``ffmpeg -re -loop 1 … -f mpjpeg -listen 1`` serving the image as a real
    MJPEG stream at ``server.url`` (``http://127.0.0.1:PORT/stream``,
    ``multipart/x-mixed-replace;boundary=ffmpeg``). ffmpeg serves ONE client,
    then exits; ``server.restart()`` serves again on the same port,
    ``server.stop()`` kills it. All are stopped at teardown.
``http_camera``
    A threaded ``http.server`` on 127.0.0.1. ``http_camera.route(path, ...)``
    sets what a path answers (status, content type, body, delay before the
    answer, a lying Content-Length, or a multipart stream of ``parts``;
    ``then_hang`` makes every request after the first hang unanswered;
    ``auth`` demands that exact ``Authorization`` header, else 401);
    ``http_camera.url(path)`` gives its URL. ``/snapshot.jpg`` answers
    ``nozzle_jpeg`` as ``image/jpeg`` from the start.
``silent_server``
    ``(url, sock)``: a listening socket that accepts connections and never
    answers (a camera that hangs).

:class:`MjpegServer` and :class:`CameraHTTPServer` can also be used directly
(e.g. by benchmark scripts that import this file).
"""

import http.server
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

NOZZLE_SIZE = (640, 480)
NOZZLE_CENTER = (331.0, 247.0)
NOZZLE_BORE_RADIUS = 18.0


def find_free_port():
    """A TCP port on 127.0.0.1 that was free when asked."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_listening(port):
    """True when something LISTENs on TCP ``port`` (read from /proc, no connect)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def draw_nozzle(size=NOZZLE_SIZE, center=NOZZLE_CENTER,
                bore_radius=NOZZLE_BORE_RADIUS):
    """A simple nozzle seen from below: grey field, bright collar, dark bore."""
    import cv2
    import numpy as np
    width, height = size
    image = np.full((height, width, 3), 70, np.uint8)
    shift = 4  # sub-pixel centres through cv2's fixed-point drawing
    scale = 1 << shift
    c = (int(round(center[0] * scale)), int(round(center[1] * scale)))
    cv2.circle(image, c, int(round(3.2 * bore_radius * scale)), (200, 205, 210),
               -1, cv2.LINE_AA, shift)
    cv2.circle(image, c, int(round(bore_radius * scale)), (12, 12, 12), -1,
               cv2.LINE_AA, shift)
    return image


@pytest.fixture
def free_port():
    return find_free_port


@pytest.fixture(scope="session")
def nozzle_png(tmp_path_factory):
    import cv2
    path = tmp_path_factory.mktemp("camera") / "nozzle.png"
    cv2.imwrite(str(path), draw_nozzle())
    return path


@pytest.fixture(scope="session")
def nozzle_jpeg():
    import cv2
    ok, data = cv2.imencode(".jpg", draw_nozzle(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


# ---------------------------------------------------------------- ffmpeg MJPEG

class MjpegServer:
    """A real MJPEG stream served by ``ffmpeg -f mpjpeg -listen 1``."""

    def __init__(self, image_path, fps=10, port=None, log_path=None, filters=None):
        if shutil.which("ffmpeg") is None:
            pytest.skip("ffmpeg is not installed (test/setup.sh installs it)")
        self.image_path = str(image_path)
        self.fps = fps
        self.port = port or find_free_port()
        self.url = "http://127.0.0.1:%d/stream" % self.port
        self.log_path = log_path
        # An ffmpeg filter chain (``noise=alls=10:allf=t``: sensor noise
        # that changes from frame to frame, as a real camera's does).
        self.filters = filters
        self.process = None
        self.start()

    def start(self, timeout=15.0):
        """Start ffmpeg and wait until it listens."""
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
             "-re", "-loop", "1", "-framerate", str(self.fps),
             "-i", self.image_path]
            + (["-vf", self.filters] if self.filters else [])
            + ["-c:v", "mjpeg", "-q:v", "3", "-f", "mpjpeg",
               "-content_type", "multipart/x-mixed-replace;boundary=ffmpeg",
               "-listen", "1", self.url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.process.poll() is not None:
                raise RuntimeError("ffmpeg exited with %s before listening"
                                   % self.process.returncode)
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ffmpeg did not listen on port %d within "
                                   "%.0f s" % (self.port, timeout))
            time.sleep(0.05)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self):
        self.stop()
        self.start()


@pytest.fixture
def mjpeg_server(tmp_path):
    servers = []

    def start(image_path, fps=10, port=None, filters=None):
        server = MjpegServer(image_path, fps=fps, port=port, filters=filters,
                             log_path=tmp_path / ("ffmpeg-%d.log" % len(servers)))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------- http.server

class Route:
    """What one path of :class:`CameraHTTPServer` answers."""

    def __init__(self, body=b"", status=200, content_type="image/jpeg",
                 delay=0.0, content_length=None, parts=None,
                 part_interval=0.1, boundary="frame", part_length=True,
                 hold=0.0, repeat=1, then_hang=False, auth=None):
        self.body = body
        self.status = status
        self.content_type = content_type
        self.delay = delay
        self.content_length = content_length
        self.parts = parts
        self.part_interval = part_interval
        self.boundary = boundary
        self.part_length = part_length
        self.hold = hold
        self.repeat = repeat
        self.then_hang = then_hang
        self.auth = auth


class _CameraHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (stdlib's name)
        route = self.server.routes.get(self.path)
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        if route is None:
            self.send_error(404)
            return
        if route.then_hang and self.server.hits[self.path] > 1:
            time.sleep(60)      # later clients: a camera that hangs
            return
        if route.auth is not None and self.headers.get("Authorization") != route.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.delay:
            time.sleep(route.delay)
        try:
            if route.parts is not None:
                self._stream(route)
            else:
                self._single(route)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _single(self, route):
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        length = (len(route.body) if route.content_length is None
                  else route.content_length)
        if length is not False:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)

    def _stream(self, route):
        self.send_response(route.status)
        self.send_header("Content-Type", "multipart/x-mixed-replace;boundary=%s"
                         % route.boundary)
        self.end_headers()
        for _ in range(route.repeat):
            for part in route.parts:
                head = "--%s\r\nContent-Type: image/jpeg\r\n" % route.boundary
                if route.part_length:
                    head += "Content-Length: %d\r\n" % len(part)
                self.wfile.write(head.encode() + b"\r\n" + part + b"\r\n")
                self.wfile.flush()
                time.sleep(route.part_interval)
        time.sleep(route.hold)

    def log_message(self, format, *args):  # noqa: A002 (stdlib's name)
        pass


class CameraHTTPServer:
    """A scriptable HTTP camera on 127.0.0.1 (snapshots, errors, streams)."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     _CameraHandler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.hits = {}
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def route(self, path, body=b"", **kwargs):
        self.httpd.routes[path] = Route(body, **kwargs)
        return self.url(path)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def hits(self, path):
        return self.httpd.hits.get(path, 0)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_camera(nozzle_jpeg):
    server = CameraHTTPServer()
    server.route("/snapshot.jpg", nozzle_jpeg)
    yield server
    server.close()


@pytest.fixture
def silent_server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield "http://127.0.0.1:%d/snapshot" % sock.getsockname()[1], sock
    sock.close()
