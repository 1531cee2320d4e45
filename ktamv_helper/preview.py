"""Read-only HTTP server of the annotated preview: MJPEG stream and snapshots.

Mainsail and Fluidd show it as a webcam: the "MJPEG stream" service reads
``/stream`` (or mjpg-streamer's ``/?action=stream``), the "adaptive MJPEG"
service polls ``/snapshot`` (or ``/?action=snapshot``).

How the work is bounded:

- ``publish`` only stores a reference to the newest frame; it never encodes
  and never waits for a client.
- One encoder thread annotates and JPEG-encodes the newest frame, at most
  ``max_fps`` times a second and only while a stream client or a snapshot
  request is waiting for a newer frame. Otherwise it sleeps on a condition
  variable, so an idle preview costs no CPU.
- Each client has its own thread that always sends the newest encoded frame;
  a slow client simply skips the frames it missed and never holds anything
  the detector or other clients need.
"""

import errno
import logging
import math
import os
import select
import selectors
import socket
import socketserver
import textwrap
import threading
import time
import urllib.parse
from http import server as http_server

import cv2

from ktamv_helper import __version__
from ktamv_helper.annotate import annotate, placeholder_image

log = logging.getLogger(__name__)

BOUNDARY = "ktamvframe"
JPEG_QUALITY = 80
MAX_STREAM_CLIENTS = 32
# Connections of every kind (streams, snapshots, pages, idle sockets) each
# hold a thread; beyond this many a new one is answered 503 and closed.
MAX_CONNECTIONS = 48
# A client that does not read for this long (full socket buffer) is dropped.
CLIENT_IO_TIMEOUT = 10.0
# With nothing new to show, a stream re-sends its last frame this often: it
# notices clients that went away and keeps proxies from timing out.
STREAM_KEEPALIVE = 5.0
SNAPSHOT_TIMEOUT = 5.0
# After a failing produce() the continuous thread waits this long.
PRODUCE_RETRY = 1.0
# Continuous annotation pauses until this long after a command's last frame.
COMMAND_HOLD = 1.0

_INDEX_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kTAMV preview</title>
<style>body{margin:0;background:#111;color:#ccc;font:14px sans-serif}
img{display:block;max-width:100vw;max-height:100vh;margin:auto}
p{position:fixed;bottom:0;margin:4px}a{color:#8cf}</style></head>
<body><img src="stream" alt="kTAMV preview stream">
<p>kTAMV preview: <a href="stream">stream</a> | <a href="snapshot">snapshot</a></p>
</body></html>
"""


class _Published:
    """The newest frame handed to the preview, not yet annotated."""

    __slots__ = ("image", "detection", "tolerance_px", "status_lines",
                 "frame_time", "raw")

    def __init__(self, image, detection=None, tolerance_px=None,
                 status_lines=(), frame_time=None, raw=False):
        self.image = image
        self.detection = detection
        self.tolerance_px = tolerance_px
        self.status_lines = tuple(str(line) for line in status_lines)
        self.frame_time = frame_time
        self.raw = raw


class _PreviewLoops:
    """The encoder and continuous-annotation threads (part of PreviewServer)."""

    def _encode_loop(self):
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._demand() and \
                            self._published_seq > self._attempted_seq:
                        wait = self._last_encode + self._interval \
                            - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                record, seq = self._published, self._published_seq
            jpeg = None
            try:
                jpeg = self._render(record)
            except Exception:
                # Once with the traceback, then rarely: a bad frame source
                # must not flood klippy.log at max_fps.
                self._render_failures += 1
                if self._render_failures in (1, 10, 100) or \
                        self._render_failures % 1000 == 0:
                    log.exception("preview: could not annotate or encode a "
                                  "frame (%d so far)", self._render_failures)
            with self._cond:
                if jpeg is not None:
                    self._jpeg, self._jpeg_seq = jpeg, seq
                self._attempted_seq = seq
                self._last_encode = time.monotonic()
                self._cond.notify_all()

    @staticmethod
    def _render(record):
        if record.raw:
            image = record.image
        else:
            lines = list(record.status_lines)
            if record.frame_time is not None:
                lines.append("frame age %.2f s"
                             % (time.monotonic() - record.frame_time))
            image = annotate(record.image, record.detection,
                             record.tolerance_px, lines)
        ok, buffer = cv2.imencode(".jpg", image,
                                  [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("cv2.imencode refused a %r frame" % (image.shape,))
        return buffer.tobytes()

    def _continuous_loop(self, produce, stop):
        while True:
            with self._cond:
                while not (stop.is_set() or self._closed or self._demand()):
                    self._cond.wait()
                if stop.is_set() or self._closed:
                    return
                tolerance_px, status_lines = self._overlay
                # A command's detector is publishing: show its frames and
                # leave it the camera and the CPU.
                hold = self._external_at + COMMAND_HOLD - time.monotonic()
            if hold > 0:
                stop.wait(hold)
                continue
            started = time.monotonic()
            try:
                result = produce()
            except Exception as exc:
                if stop.is_set():
                    return
                message = getattr(exc, "message", None) or str(exc) \
                    or type(exc).__name__
                self._store(_Published(
                    _error_image(self._published.image, message), raw=True))
                stop.wait(max(PRODUCE_RETRY, self._interval))
                continue
            if stop.is_set():
                return
            if result is not None:
                image, detection = result[0], result[1]
                if len(result) > 2:
                    tolerance_px = result[2]
                if len(result) > 3:
                    status_lines = result[3]
                self._publish(image, detection, tolerance_px, status_lines,
                              external=False)
            stop.wait(max(0.0, started + self._interval - time.monotonic()))



class _PreviewClients:
    """Stream and snapshot answers, from the HTTP handler threads (part of
    PreviewServer)."""

    # Called from the HTTP handler threads.
    def _register(self, connection):
        with self._cond:
            self._connections.add(connection)

    def _unregister(self, connection):
        with self._cond:
            self._connections.discard(connection)

    def _stream(self, handler, head):
        with self._cond:
            if self._stream_clients >= MAX_STREAM_CLIENTS:
                full = True
            else:
                full = False
                self._stream_clients += 1
                self._cond.notify_all()
        if full:
            handler.send_plain(503, "Too many preview clients (%d); close a "
                               "preview tab and retry.\n" % MAX_STREAM_CLIENTS)
            return
        try:
            handler.send_response(200)
            handler.send_header("Content-Type",
                                "multipart/x-mixed-replace;boundary=" + BOUNDARY)
            handler.send_no_cache_headers()
            handler.end_headers()
            if head:
                return
            # Each part is followed at once by the next boundary, so browsers
            # show a frame as soon as it is complete, not one frame late.
            handler.wfile.write(("--%s\r\n" % BOUNDARY).encode("ascii"))
            sent_seq = 0
            while True:
                with self._cond:
                    deadline = time.monotonic() + STREAM_KEEPALIVE
                    while not self._closed and self._jpeg_seq <= sent_seq:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if self._closed:
                        return
                    jpeg, seq = self._jpeg, self._jpeg_seq
                if _peer_closed(handler.connection):
                    return
                if jpeg is None:
                    continue
                header = ("Content-Type: image/jpeg\r\nContent-Length: %d\r\n"
                          "\r\n" % len(jpeg)).encode("ascii")
                trailer = ("\r\n--%s\r\n" % BOUNDARY).encode("ascii")
                handler.wfile.write(header + jpeg + trailer)
                sent_seq = seq
        except OSError:
            pass  # the client went away (or stalled past CLIENT_IO_TIMEOUT)
        finally:
            with self._cond:
                self._stream_clients -= 1

    def _snapshot(self, handler, head):
        with self._cond:
            wanted = self._published_seq
            # _published_at is -inf for placeholders: never fresh.
            fresh = time.monotonic() - self._published_at <= self._interval
            if self._continuous_stop is not None and not fresh:
                wanted += 1  # the continuous thread will produce a newer one
            self._snapshot_waiters += 1
            self._cond.notify_all()
            try:
                deadline = time.monotonic() + SNAPSHOT_TIMEOUT
                while not self._closed and self._attempted_seq < wanted:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                jpeg = self._jpeg
            finally:
                self._snapshot_waiters -= 1
        if jpeg is None:
            handler.send_plain(503, "No preview frame yet; retry.\n")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(jpeg)))
        handler.send_no_cache_headers()
        handler.end_headers()
        if not head:
            handler.wfile.write(jpeg)




class PreviewServer(_PreviewLoops, _PreviewClients):
    """Serve annotated frames over HTTP as MJPEG, snapshots and a small page.

    Parameters
    ----------
    host : str
        Address to bind (``127.0.0.1`` for this computer only, ``0.0.0.0``
        for every interface).
    port : int
        TCP port; 0 picks a free one (see ``status()["url"]``).
    max_fps : float
        Most frames encoded (and sent to any client) per second.
    """

    def __init__(self, host="127.0.0.1", port=8081, max_fps=10.0):
        max_fps = float(max_fps)
        if not math.isfinite(max_fps) or max_fps <= 0:
            raise ValueError("max_fps must be a positive number, got %r"
                             % (max_fps,))
        self.host = host
        self.port = int(port)
        self.max_fps = max_fps
        self._interval = 1.0 / max_fps
        self._cond = threading.Condition()
        self._closed = False
        self._error = None
        self._httpd = None
        self._bound_port = None
        self._wake_r = self._wake_w = None
        self._threads = []
        self._connections = set()
        # Newest published frame, counted so waiters know what "newer" means.
        self._published = _Published(
            placeholder_image(["kTAMV preview", "waiting for camera"]),
            raw=True)
        self._published_seq = 1
        self._published_at = -math.inf
        # Newest encoded JPEG and the publish count it was made from.
        self._jpeg = None
        self._jpeg_seq = 0
        self._attempted_seq = 0
        self._last_encode = -math.inf
        self._stream_clients = 0
        self._snapshot_waiters = 0
        # Continuous annotation.
        self._continuous_stop = None
        self._overlay = (None, ())
        # Last frame published by a command (not the continuous thread).
        self._external_at = -math.inf
        self._render_failures = 0

    # ------------------------------------------------------------ lifecycle
    def start(self):
        """Bind the port and start serving in daemon threads.

        Raises
        ------
        OSError
            The address cannot be bound (port in use, address not on this
            computer, privileged port); the message says what to change.
        """
        with self._cond:
            if self._httpd is not None:
                return
            if self._closed:
                raise OSError("The preview server was closed; create a new one.")
        try:
            httpd = _HTTPServer((self.host, self.port), _Handler, self)
        except (OSError, OverflowError) as exc:
            message = _bind_error_message(self.host, self.port, exc)
            self._error = message
            error = OSError(message)
            error.errno = getattr(exc, "errno", None)
            raise error from exc
        self._wake_r, self._wake_w = os.pipe()
        with self._cond:
            self._httpd = httpd
            self._bound_port = httpd.server_address[1]
            self._error = None
        for target, name in ((self._serve, "ktamv-preview-http"),
                             (self._encode_loop, "ktamv-preview-encoder")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("preview serving on %s", self.status()["url"])

    def close(self):
        """Stop every thread and close the sockets (returns within ~1 s)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._continuous_stop is not None:
                self._continuous_stop.set()
            self._cond.notify_all()
            connections = list(self._connections)
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        for connection in connections:
            # Unblocks client threads stuck in a write to a stalled client.
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._httpd is not None:
            self._httpd.server_close()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ------------------------------------------------------------ frames in
    def publish(self, image, detection=None, tolerance_px=None,
                status_lines=()):
        """Offer a frame to the preview; returns at once.

        Parameters
        ----------
        image : ndarray or Frame
            BGR frame; a :class:`~ktamv_helper.cameras.base.Frame` adds a
            "frame age" line. The array is kept, not copied: don't modify it
            afterwards.
        detection : object, optional
            Bore found in the frame (``center``, ``radius``, ``score``).
        tolerance_px : float, optional
            Radius of the target circle around the image centre.
        status_lines : sequence of str
            Text lines drawn on the frame.
        """
        self._publish(image, detection, tolerance_px, status_lines,
                      external=True)

    def _publish(self, image, detection, tolerance_px, status_lines,
                 external):
        frame_time = getattr(image, "timestamp", None)
        image = getattr(image, "image", image)
        if image is None:
            return
        record = _Published(image, detection, tolerance_px, status_lines,
                            frame_time)
        self._store(record, external)

    def set_status(self, tolerance_px=None, status_lines=()):
        """Set the tolerance circle and text of continuously annotated frames."""
        with self._cond:
            self._overlay = (tolerance_px, tuple(str(l) for l in status_lines))

    def start_continuous(self, produce):
        """Annotate frames from ``produce()`` until :meth:`stop_continuous`.

        ``produce()`` returns ``(image, detection_or_None)`` (optionally
        followed by ``tolerance_px`` and ``status_lines``, overriding
        :meth:`set_status`) or None to skip. It is called from a thread of
        the preview at most ``max_fps`` times a second, and only while a
        stream client or a snapshot request is waiting, so an unwatched
        preview reads no camera, and not while a command publishes frames
        (until ``COMMAND_HOLD`` s after its last one), so the detector's
        frames are shown and it has the camera to itself. An exception is
        shown on the preview and retried after a pause.
        """
        self.stop_continuous()
        stop = threading.Event()
        with self._cond:
            if self._closed:
                return
            self._continuous_stop = stop
        thread = threading.Thread(target=self._continuous_loop,
                                  args=(produce, stop),
                                  name="ktamv-preview-continuous", daemon=True)
        thread.start()

    def stop_continuous(self):
        """Stop continuous annotation; the last frame stays on the preview."""
        with self._cond:
            stop, self._continuous_stop = self._continuous_stop, None
            if stop is not None:
                stop.set()
                self._cond.notify_all()

    # --------------------------------------------------------------- status
    def status(self):
        """Return the protocol's preview status object."""
        with self._cond:
            running = self._httpd is not None and not self._closed
            url = None
            if running:
                url = "http://%s:%d/" % (_url_host(self.host), self._bound_port)
            return {
                "running": running,
                "annotating": self._continuous_stop is not None,
                "url": url,
                "stream_url": url + "stream" if url else None,
                "snapshot_url": url + "snapshot" if url else None,
                "clients": self._stream_clients,
                "error": self._error,
            }

    # ------------------------------------------------------------ internals
    def _store(self, record, external=False):
        with self._cond:
            if external:
                self._external_at = time.monotonic()
            self._published = record
            self._published_seq += 1
            self._published_at = -math.inf if record.raw else time.monotonic()
            if self._demand():
                self._cond.notify_all()

    def _demand(self):
        return self._stream_clients + self._snapshot_waiters

    def _serve(self):
        """Accept connections until ``close`` writes to the wake-up pipe."""
        httpd = self._httpd
        httpd.timeout = 0  # handle_request must not wait: select did that
        with selectors.DefaultSelector() as selector:
            selector.register(httpd.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in selector.select():
                    if key.fileobj == self._wake_r or self._closed:
                        return
                    try:
                        httpd.handle_request()
                    except Exception:  # never let one request stop the server
                        log.exception("preview: accepting a connection failed")



class _HTTPServer(socketserver.ThreadingMixIn, http_server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 32

    def __init__(self, address, handler_class, preview):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.preview = preview
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, handler_class)

    def process_request(self, request, client_address):
        with self._active_lock:
            full = self._active >= MAX_CONNECTIONS
            if not full:
                self._active += 1
        if not full:
            super().process_request(request, client_address)
            return
        try:
            request.sendall(b"HTTP/1.0 503 Service Unavailable\r\n"
                            b"Content-Type: text/plain\r\n\r\nToo many "
                            b"preview connections; close some and retry.\n")
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def server_bind(self):
        # HTTPServer.server_bind asks DNS for our name (getfqdn), which can
        # hang for seconds on a Pi without working DNS; we don't need it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = self.server_address[1]


class _Handler(http_server.BaseHTTPRequestHandler):
    server_version = "kTAMV-preview/" + __version__
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_IO_TIMEOUT

    def setup(self):
        super().setup()
        self.server.preview._register(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.preview._unregister(self.connection)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)

    def __getattr__(self, name):
        # Every other method (POST, PUT, DELETE, ...): read-only server.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self):
        self.send_plain(405, "The kTAMV preview is read-only: use GET.\n",
                        extra_headers=(("Allow", "GET, HEAD"),))

    def _route(self, head):
        preview = self.server.preview
        parts = urllib.parse.urlsplit(self.path)
        action = urllib.parse.parse_qs(parts.query).get("action", [None])[0]
        try:
            if parts.path == "/stream" or (parts.path == "/"
                                           and action == "stream"):
                preview._stream(self, head)
            elif parts.path == "/snapshot" or (parts.path == "/"
                                               and action == "snapshot"):
                preview._snapshot(self, head)
            elif parts.path == "/" and action is None:
                self.send_plain(200, _INDEX_HTML, "text/html; charset=utf-8",
                                head=head)
            else:
                self.send_plain(404, "Not found. The kTAMV preview serves /, "
                                "/stream and /snapshot.\n", head=head)
        except OSError:
            pass  # client disconnected

    def send_no_cache_headers(self):
        self.send_header("Cache-Control",
                         "no-store, no-cache, must-revalidate, max-age=0")
        self.send_header("Pragma", "no-cache")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Connection", "close")

    def send_plain(self, code, text, content_type="text/plain; charset=utf-8",
                   head=False, extra_headers=()):
        body = text.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.send_no_cache_headers()
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (stdlib's name)
        log.debug("preview %s: %s", self.address_string(), format % args)


def _peer_closed(connection):
    """True when the client has hung up (its socket reads as end-of-file).

    Clients send nothing after their request, so a readable socket means
    EOF or a reset; checking before each write frees an idle stream's
    thread at the next keep-alive instead of after a failed write.
    """
    try:
        poller = select.poll()  # unlike select(), fine with fds above 1024
        poller.register(connection, select.POLLIN)
        if not poller.poll(0):
            return False
        return connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _url_host(host):
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        return "[%s]" % host
    return host


def _bind_error_message(host, port, exc):
    code = getattr(exc, "errno", None)
    where = "%s:%s" % (host, port)
    if code == errno.EADDRINUSE:
        return ("Preview port %s is already in use by another program (a "
                "webcam streamer, Moonraker or a second Klipper?); set a free "
                "preview_port in [ktamv]. The preview is off; everything "
                "else works." % where)
    if code == errno.EADDRNOTAVAIL:
        return ("Preview address %s is not an address of this computer; set "
                "preview_host in [ktamv] to 127.0.0.1 or 0.0.0.0. The preview "
                "is off; everything else works." % where)
    if code == errno.EACCES:
        return ("Preview port %s needs root (ports below 1024); set "
                "preview_port in [ktamv] to 1024 or higher. The preview is "
                "off; everything else works." % where)
    return ("Preview server could not listen on %s: %s. Check preview_host "
            "and preview_port in [ktamv]; the preview is off, everything else "
            "works." % (where, str(exc).rstrip(".")))


def _error_image(previous, message):
    """A blank frame the size of ``previous`` with the error written on it."""
    height, width = previous.shape[:2]
    lines = ["kTAMV preview: no frame"] + textwrap.wrap(message, 60)[:6]
    return placeholder_image(lines, size=(width, height))
