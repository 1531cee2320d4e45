"""The helper's JSON-lines protocol on stdin/stdout (``docs/protocol.md``).

The main thread announces ``ready`` before anything heavy is imported, then
only reads stdin and hands each request to a worker thread; replies are
written whole under a lock. Nothing but protocol lines may reach stdout, so
the real stdout is kept on a private file descriptor and fd 1 is pointed at
stderr (where OpenCV's and Python's chatter then lands harmlessly).
"""

import json
import logging
import os
import select
import sys
import threading
import time
import traceback

from ktamv_helper import PROTOCOL_VERSION, __version__
from ktamv_helper.errors import HelperError

log = logging.getLogger("ktamv_helper.server")

MAX_LINE_BYTES = 1024 * 1024
READ_CHUNK = 64 * 1024
# How long shutdown / end of input waits for the camera and preview to close
# before the helper exits anyway (the protocol allows one second in total).
CLOSE_WAIT = 0.5
# At end of input, requests already running get this long to reply (useful
# when the helper is driven by a pipe; Klippy is usually gone by then).
FINISH_WAIT = 0.3
# Requests running at once; more are answered "busy" at once (the extra
# has at most a few in flight, so this only stops a runaway sender).
MAX_WORKERS = 16


class ProtocolWriter:
    """Writes one JSON object per line to the protocol fd, whole, under a lock."""

    def __init__(self, fd):
        self._fd = fd
        self._lock = threading.Lock()
        self._broken = False

    def send(self, message):
        try:
            data = json.dumps(message, allow_nan=False, default=_jsonable,
                              separators=(",", ":")) + "\n"
        except (TypeError, ValueError) as exc:
            # A result that JSON cannot carry (NaN, odd type) is a bug; the
            # request still gets its one reply.
            if "id" not in message:
                raise
            data = json.dumps({"id": message["id"], "error": {
                "code": "internal_error",
                "message": "The helper built a reply it cannot encode as "
                           "JSON (%s); please report this." % exc}}) + "\n"
        payload = data.encode("utf-8")
        with self._lock:
            if self._broken:
                return False
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            except OSError as exc:
                # The extra went away; keep running until stdin closes.
                self._broken = True
                log.warning("cannot write to the extra any more: %s", exc)
                return False
        return True


def _jsonable(value):
    """Turn numpy scalars and arrays (and tuples) into JSON-able values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError("%s is not JSON serialisable" % type(value).__name__)


def iter_lines(fd, max_bytes=MAX_LINE_BYTES, chunk=READ_CHUNK):
    """Yield the lines read from ``fd`` as bytes, without their newline.

    A line longer than ``max_bytes`` is discarded up to its newline and
    yielded as ``None``, so the caller can answer it, without ever holding
    more than ``max_bytes + chunk`` bytes. Ends at end of input.
    """
    buffer = bytearray()
    discarding = False
    while True:
        try:
            data = os.read(fd, chunk)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([fd], [], [])
            continue
        except OSError as exc:
            log.warning("reading stdin failed (%s); treating it as closed", exc)
            data = b""
        if not data:
            if buffer and not discarding:
                yield bytes(buffer)
            elif discarding:
                yield None
            return
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                if not discarding:
                    buffer += data[start:]
                    if len(buffer) > max_bytes:
                        buffer.clear()
                        discarding = True
                break
            if discarding:
                discarding = False
                yield None
            else:
                buffer += data[start:newline]
                if len(buffer) > max_bytes:
                    yield None
                else:
                    yield bytes(buffer)
                buffer.clear()
            start = newline + 1


class Server:
    """Parses requests, dispatches them to worker threads, sends replies."""

    def __init__(self, writer, service):
        self.writer = writer
        self.service = service
        self._workers = set()
        self._workers_lock = threading.Lock()

    def event(self, name, **fields):
        message = {"event": name}
        message.update(fields)
        self.writer.send(message)

    def error_event(self, code, message):
        log.warning("%s: %s", code, message)
        self.event("error", code=code, message=message)

    def reply_error(self, request_id, error):
        self.writer.send({"id": request_id, "error": error.to_json()})

    def handle_line(self, line):
        """Handle one input line; return the request to stop at, or None.

        Returns ``("shutdown", id)`` for a valid shutdown request, so the
        main thread can reply and exit itself.
        """
        received = time.monotonic()
        if line is None:
            self.error_event("line_too_long",
                             "A request line longer than %d bytes was "
                             "discarded." % MAX_LINE_BYTES)
            return None
        if not line.strip():
            return None
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self.error_event("parse_error", "A request line is not valid "
                             "JSON (%s): %r" % (exc, line[:80]))
            return None
        if not isinstance(request, dict):
            self.error_event("parse_error", "A request line is JSON but not "
                             "an object: %r" % line[:80])
            return None
        request_id = request.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            self.error_event("invalid_request", "A request has no integer id "
                             "(id=%r); it was ignored." % (request_id,))
            return None
        method = request.get("method")
        if not isinstance(method, str):
            self.reply_error(request_id, HelperError(
                "invalid_request", "The request has no method name."))
            return None
        params = request.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            self.reply_error(request_id, HelperError(
                "invalid_request", "params must be an object, not %s."
                % type(params).__name__))
            return None
        if method == "shutdown":
            return ("shutdown", request_id)
        worker = threading.Thread(
            target=self.run_request, args=(request_id, method, params,
                                           received),
            name="ktamv-%s-%d" % (method, request_id), daemon=True)
        with self._workers_lock:
            busy = len(self._workers) >= MAX_WORKERS
            if not busy:
                self._workers.add(worker)
        if busy:
            self.reply_error(request_id, HelperError(
                "busy", "The helper is already working on %d requests; "
                "this one was refused. Wait for them to finish (or for "
                "their timeouts) and try again." % MAX_WORKERS))
            return None
        worker.start()
        return None

    def run_request(self, request_id, method, params, received):
        try:
            self._run_request(request_id, method, params, received)
        finally:
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    def _run_request(self, request_id, method, params, received):
        try:
            result = self.service.call(method, params, received=received)
        except HelperError as exc:
            self.reply_error(request_id, exc)
            return
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.reply_error(request_id, HelperError(
                "internal_error", "The helper failed inside %s: %s: %s "
                "(the traceback is in klippy.log; please report it)."
                % (method, type(exc).__name__, exc)))
            return
        self.writer.send({"id": request_id, "result": result})

    def finish_requests(self, wait):
        """Give requests still running up to ``wait`` seconds to reply."""
        deadline = time.monotonic() + wait
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def close_service(self):
        """Close camera and preview, waiting at most ``CLOSE_WAIT`` seconds."""
        closer = threading.Thread(target=self._close_quietly, daemon=True,
                                  name="ktamv-close")
        closer.start()
        closer.join(CLOSE_WAIT)
        if closer.is_alive():
            log.warning("camera or preview did not close within %.1f s; "
                        "exiting anyway", CLOSE_WAIT)

    def _close_quietly(self):
        try:
            self.service.call("shutdown", {})
        except Exception:
            log.exception("closing the service failed")


def _make_blocking(fd):
    """Pipes inherited in non-blocking mode (e.g. through ssh) would make
    reads and writes fail with EAGAIN; this process wants to wait instead."""
    try:
        os.set_blocking(fd, True)
    except (OSError, AttributeError):
        pass


def _protect_stdout():
    """Keep the real stdout for protocol lines only; fd 1 becomes stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    _make_blocking(protocol_fd)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_fd


def _warm_up():
    """Import the heavy modules in the background so the first request is quick.

    The detector's scikit-image pieces load SciPy lazily on first use (about
    0.8 s here, seconds on a Raspberry Pi), so it also runs once on a small
    drawn nozzle: that time is spent while Klippy starts, not inside the
    first detect's timeout.
    """
    try:
        import cv2
        import numpy as np
        from ktamv_helper.cameras import base  # noqa: F401
        from ktamv_helper import consensus  # noqa: F401
        from ktamv_helper.detection import detect_nozzle
        image = np.full((120, 160, 3), 60, np.uint8)
        cv2.circle(image, (80, 60), 30, (210, 210, 210), -1, cv2.LINE_AA)
        cv2.circle(image, (80, 60), 9, (10, 10, 10), -1, cv2.LINE_AA)
        detect_nozzle(image)
    except Exception:
        log.exception("warming up OpenCV and the detector failed")


def main(argv=None):
    """Run the protocol on stdin/stdout until ``shutdown`` or end of input.

    Exits the process (status 0) itself when done; returns 2 on bad usage.
    """
    if argv:
        sys.stderr.write("usage: python -m ktamv_helper [serve]\n")
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    writer = ProtocolWriter(_protect_stdout())
    writer.send({"event": "ready", "helper": __version__,
                 "protocol": PROTOCOL_VERSION,
                 "python": sys.version.split()[0], "pid": os.getpid(),
                 "monotonic": time.monotonic()})

    from ktamv_helper.service import Service
    server = Server(writer, None)
    server.service = Service(emit_event=writer.send)
    threading.Thread(target=_warm_up, name="ktamv-warm-up",
                     daemon=True).start()

    stdin_fd = sys.stdin.fileno() if sys.stdin is not None else 0
    _make_blocking(stdin_fd)
    for line in iter_lines(stdin_fd):
        try:
            stop = server.handle_line(line)
        except Exception:
            # A bug in parsing must not end the helper.
            log.exception("handling a request line failed")
            continue
        if stop is not None:
            writer.send({"id": stop[1], "result": {"ok": True}})
            log.info("shutdown requested")
            server.close_service()
            server.finish_requests(FINISH_WAIT)
            _exit_now(0)
    log.info("stdin closed; exiting")
    server.finish_requests(FINISH_WAIT)
    server.close_service()
    _exit_now(0)


def _exit_now(status):
    """End the process without interpreter finalisation.

    Worker or warm-up threads may still be inside OpenCV or SciPy; running
    C++ static destructors under them aborts the process ("terminate called
    without an active exception", exit status -6). Everything that matters
    (camera, preview, replies) is closed or flushed by now.
    """
    logging.shutdown()
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)
