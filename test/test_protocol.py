"""The JSON-lines protocol over a real helper subprocess (python -m ktamv_helper)."""

import json
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time

import pytest

from ktamv_helper.errors import HelperError
from ktamv_helper.server import MAX_LINE_BYTES, ProtocolWriter, Server, iter_lines

REPO = pathlib.Path(__file__).resolve().parent.parent
# Bounds are generous: the machine is shared; speed targets live in
# test/bench_helper.py.
REPLY_WAIT = 20.0


class Helper:
    """A running helper with a reader thread collecting its stdout lines."""

    def __init__(self, tmp_path):
        self.stderr_path = tmp_path / "helper-stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ktamv_helper"], cwd=str(REPO),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines = queue.Queue()
        self.raw = []           # every stdout line, in order
        self.pending = []       # parsed messages not yet claimed
        self.next_id = 1
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.raw.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def send_raw(self, data):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message):
        self.send_raw(json.dumps(message).encode() + b"\n")

    def request(self, method, params=None, **extra):
        request_id = self.next_id
        self.next_id += 1
        message = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        message.update(extra)
        self.send(message)
        return request_id

    def _next_message(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no message in time; stderr:\n%s" % self.stderr())
        try:
            line = self.lines.get(timeout=remaining)
        except queue.Empty:
            raise AssertionError("no message in time; stderr:\n%s" % self.stderr())
        if line is None:
            raise AssertionError("helper closed stdout; stderr:\n%s" % self.stderr())
        return json.loads(line)

    def wait_for(self, predicate, timeout=REPLY_WAIT):
        for index, message in enumerate(self.pending):
            if predicate(message):
                return self.pending.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            message = self._next_message(deadline)
            if predicate(message):
                return message
            self.pending.append(message)

    def reply(self, request_id, timeout=REPLY_WAIT):
        return self.wait_for(lambda m: m.get("id") == request_id, timeout)

    def event(self, name, timeout=REPLY_WAIT):
        return self.wait_for(lambda m: m.get("event") == name, timeout)

    def call(self, method, params=None, timeout=REPLY_WAIT):
        return self.reply(self.request(method, params), timeout)

    def close_stdin(self):
        self.process.stdin.close()

    def stderr(self):
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()


@pytest.fixture
def helper(tmp_path):
    process = Helper(tmp_path)
    yield process
    process.stop()
    # Whatever happened, stdout carried protocol lines only.
    for line in process.raw:
        message = json.loads(line)
        assert isinstance(message, dict) and ("id" in message or "event" in message)


@pytest.fixture
def ready_helper(helper, nozzle_png):
    helper.event("ready")
    reply = helper.call("configure", {"camera_url": "file:%s" % nozzle_png})
    assert "result" in reply, reply
    return helper


def test_ready_is_the_first_line_even_with_a_request_already_waiting(helper):
    helper.request("version", {"check_camera": False})
    first = helper._next_message(time.monotonic() + REPLY_WAIT)
    assert first["event"] == "ready"
    assert first["protocol"] == 1 and first["pid"] == helper.process.pid
    assert first["python"] == sys.version.split()[0]
    # The helper's monotonic clock is the machine's (CLOCK_MONOTONIC).
    assert abs(first["monotonic"] - time.monotonic()) < REPLY_WAIT
    reply = helper.reply(1)
    assert reply["result"]["protocol"] == 1


def test_bad_input_is_answered_and_the_helper_keeps_working(ready_helper):
    helper = ready_helper
    events = [
        (b"this is not json", "parse_error"),
        (b"[1, 2, 3]", "parse_error"),
        (b'"a string"', "parse_error"),
        (b"\xff\xfe\x00 not utf-8", "parse_error"),
        (b'{"method": "version"}', "invalid_request"),
        (b'{"id": "seven", "method": "version"}', "invalid_request"),
        (b'{"id": 1.5, "method": "version"}', "invalid_request"),
        (b'{"id": true, "method": "version"}', "invalid_request"),
    ]
    for line, code in events:
        helper.send_raw(line + b"\n")
        event = helper.event("error")
        assert event["code"] == code, (line, event)
        assert event["message"]
        assert helper.call("version", {"check_camera": False})["result"]["protocol"] == 1
    replies = [
        ({"id": 900}, "invalid_request"),
        ({"id": 901, "method": 7}, "invalid_request"),
        ({"id": 902, "method": "version", "params": [1]}, "invalid_request"),
        ({"id": 903, "method": "make_coffee"}, "unknown_method"),
        ({"id": 904, "method": "detect", "params": {"frames": "three"}},
         "invalid_params"),
        ({"id": 905, "method": "configure", "params": {}}, "invalid_params"),
        ({"id": 906, "method": "fit_camera_model", "params": {"pairs": "no"}},
         "invalid_params"),
    ]
    for message, code in replies:
        helper.send(message)
        reply = helper.reply(message["id"])
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["message"].endswith(".")
        assert helper.call("version", {"check_camera": False})["result"]["protocol"] == 1
    # A blank line is no request: nothing answers it.
    helper.send_raw(b"\n   \n")
    reply = helper.call("grab")
    assert reply["result"]["frame_size"] == [640, 480]
    assert helper.pending == []
    assert helper.process.poll() is None


def test_an_oversized_line_is_discarded_and_answered(ready_helper):
    helper = ready_helper
    # 2.5 MiB in pieces, then the newline, then a normal request.
    piece = b"x" * (256 * 1024)
    for _ in range(10):
        helper.send_raw(piece)
    helper.send_raw(b"\n")
    event = helper.event("error")
    assert event["code"] == "line_too_long"
    assert helper.call("version", {"check_camera": False})["result"]["protocol"] == 1
    # A large line under the limit is still a request.
    big = {"id": 77, "method": "version",
           "params": {"check_camera": False, "padding": "y" * (MAX_LINE_BYTES - 200)}}
    helper.send(big)
    assert helper.reply(77)["result"]["protocol"] == 1


def test_requests_run_concurrently_and_replies_match_ids(ready_helper,
                                                         http_camera):
    helper = ready_helper
    http_camera.route("/slow.jpg", b"", delay=30)
    reply = helper.call("configure", {"camera_url": http_camera.url("/slow.jpg"),
                                      "camera_timeout": 10})
    assert "result" in reply
    slow = helper.request("detect", {"timeout": 20})
    started = time.monotonic()
    version = helper.call("version", {"check_camera": False}, timeout=10)
    assert version["result"]["camera"]["url"] == http_camera.url("/slow.jpg")
    status = helper.call("preview", {"action": "status"}, timeout=10)
    assert status["result"]["running"] is False
    # Neither waited for the stuck detect.
    assert time.monotonic() - started < 5.0
    # shutdown answers and the helper exits with the detect still stuck.
    bye = helper.request("shutdown")
    assert helper.reply(bye, timeout=10)["result"] == {"ok": True}
    assert helper.process.wait(10) == 0
    assert time.monotonic() - started < 10.0
    assert slow not in [m.get("id") for m in helper.pending]


def test_stdin_close_exits_promptly_with_a_stream_and_preview_running(
        helper, mjpeg_server, nozzle_png, free_port):
    helper.event("ready")
    server = mjpeg_server(nozzle_png, fps=10)
    port = free_port()
    reply = helper.call("configure", {"camera_url": server.url,
                                      "preview_port": port})
    assert reply["result"]["preview"]["running"] is True
    assert helper.call("detect", {"frames": 2})["result"]["frames_used"] == 2
    helper.call("preview", {"action": "start"})
    closed = time.monotonic()
    helper.close_stdin()
    assert helper.process.wait(10) == 0
    # The protocol asks for one second; allow for a loaded machine.
    assert time.monotonic() - closed < 3.0
    assert "stdin closed" in helper.stderr()


def test_exit_status_is_zero_whenever_stdin_closes(tmp_path):
    # Closing while the helper still warms up OpenCV/SciPy in a background
    # thread once aborted the process from C++ destructors (status -6, about
    # one close in 30): close at moments spread over the warm-up.
    for attempt in range(10):
        helper = Helper(tmp_path)
        try:
            helper.event("ready")
            if attempt % 2:
                helper.call("version", {"check_camera": False})
            time.sleep(0.1 * attempt)
            closed = time.monotonic()
            helper.close_stdin()
            assert helper.process.wait(10) == 0, helper.stderr()
            assert time.monotonic() - closed < 3.0
        finally:
            helper.stop()


def test_non_blocking_pipes_from_the_parent_still_work(tmp_path):
    # Pipes set O_NONBLOCK on the helper's side (as an ssh relay may leave
    # them) must not make reads fail with EAGAIN.
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    os.set_blocking(stdin_read, False)
    os.set_blocking(stdout_write, False)
    process = subprocess.Popen([sys.executable, "-m", "ktamv_helper"],
                               cwd=str(REPO), stdin=stdin_read,
                               stdout=stdout_write, stderr=subprocess.DEVNULL)
    os.close(stdin_read)
    os.close(stdout_write)
    try:
        with os.fdopen(stdout_read, "rb") as out, os.fdopen(stdin_write, "wb") as into:
            assert json.loads(out.readline())["event"] == "ready"
            time.sleep(0.3)     # the helper now waits on an empty stdin
            into.write(b'{"id": 1, "method": "version", "params": {"check_camera": false}}\n')
            into.flush()
            assert json.loads(out.readline())["result"]["protocol"] == 1
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_busy_preview_port_is_a_log_event_not_a_failure(ready_helper,
                                                          nozzle_png):
    import socket
    helper = ready_helper
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        reply = helper.call("configure", {"camera_url": "file:%s" % nozzle_png,
                                          "preview_port": port})
        assert reply["result"]["preview"]["running"] is False
        assert str(port) in reply["result"]["preview"]["error"]
        event = helper.event("log")
        assert event["level"] == "warning" and str(port) in event["message"]
        assert helper.call("detect", {"frames": 1})["result"]["frames_used"] == 1


def test_shutdown_replies_then_exits_zero(ready_helper):
    helper = ready_helper
    bye = helper.request("shutdown")
    assert helper.reply(bye)["result"] == {"ok": True}
    assert helper.process.wait(10) == 0


def test_machine_state_rides_along_any_request(ready_helper):
    helper = ready_helper
    reply = helper.call("configure", {"camera_url": "sim://?seed=2&latency=0",
                                      "detection_tolerance": 1.0})
    assert "result" in reply
    cx, cy = helper.call("sim_truth")["result"]["camera_xy"]
    reply = helper.call("detect", {"frames": 2,
                                   "machine": {"position": [cx + 0.1, cy, 5],
                                               "tool": "extruder",
                                               "moves": [[cx, cy, 5]]}})
    assert reply["result"]["frames_used"] == 2
    reply = helper.call("grab", {"machine": {"position": "here"}})
    assert reply["error"]["code"] == "invalid_params"
    assert "machine.position" in reply["error"]["message"]


# ---------------------------------------------------------------- in-process


class _Exploding:
    """A service whose method has a bug, to exercise internal_error."""

    def call(self, method, params, received=None):
        if method == "boom":
            raise ZeroDivisionError("division by zero")
        if method == "nan":
            return {"value": float("nan")}
        raise HelperError("unknown_method", "no %s." % method)


def _read_messages(fd, count):
    messages, buffer = [], b""
    while len(messages) < count:
        buffer += os.read(fd, 65536)
        *lines, buffer = buffer.split(b"\n")
        messages.extend(json.loads(line) for line in lines)
    return messages


def test_exceptions_inside_methods_become_internal_errors():
    read_fd, write_fd = os.pipe()
    try:
        server = Server(ProtocolWriter(write_fd), _Exploding())
        server.handle_line(b'{"id": 1, "method": "boom"}')
        server.handle_line(b'{"id": 2, "method": "nan"}')
        server.finish_requests(10)
        replies = {m["id"]: m for m in _read_messages(read_fd, 2)}
        assert replies[1]["error"]["code"] == "internal_error"
        assert "ZeroDivisionError: division by zero" in replies[1]["error"]["message"]
        assert replies[2]["error"]["code"] == "internal_error"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_iter_lines_caps_line_length():
    read_fd, write_fd = os.pipe()
    data = (b"short\n" + b"z" * 5000 + b"\nafter\n" + b"q" * 3000)

    def write():
        os.write(write_fd, data)
        os.close(write_fd)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        lines = list(iter_lines(read_fd, max_bytes=1000, chunk=700))
    finally:
        writer.join(10)
        os.close(read_fd)
    # The over-long line and the over-long unterminated tail are reported,
    # the lines around them survive.
    assert lines == [b"short", None, b"after", None]


def test_nothing_but_protocol_reaches_the_real_stdout(tmp_path):
    # Python prints, C-level writes to fd 1 and logging all go to stderr.
    script = (
        "import logging, os, sys\n"
        "from ktamv_helper import server\n"
        "fd = server._protect_stdout()\n"
        "print('python print')\n"
        "os.write(1, b'c-level write\\n')\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "logging.warning('a log line')\n"
        "server.ProtocolWriter(fd).send({'event': 'log', 'level': 'info', 'message': 'ok'})\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=str(REPO),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'{"event":"log","level":"info","message":"ok"}\n'
    for text in (b"python print", b"c-level write", b"a log line"):
        assert text in result.stderr


class _Blocking:
    """A service whose every call waits until ``release`` is set."""

    def __init__(self):
        self.release = threading.Event()

    def call(self, method, params, received=None):
        self.release.wait(20)
        return {"ok": True}


def test_requests_beyond_the_worker_cap_are_refused_at_once():
    from ktamv_helper.server import MAX_WORKERS
    read_fd, write_fd = os.pipe()
    service = _Blocking()
    try:
        server = Server(ProtocolWriter(write_fd), service)
        for request_id in range(1, MAX_WORKERS + 3):
            server.handle_line(b'{"id": %d, "method": "detect"}' % request_id)
        refused = _read_messages(read_fd, 2)
        assert sorted(m["id"] for m in refused) == [MAX_WORKERS + 1,
                                                    MAX_WORKERS + 2]
        assert all(m["error"]["code"] == "busy" for m in refused)
        assert threading.active_count() <= MAX_WORKERS + 8
        service.release.set()
        server.finish_requests(10)
        done = _read_messages(read_fd, MAX_WORKERS)
        assert all(m["result"] == {"ok": True} for m in done)
    finally:
        service.release.set()
        os.close(read_fd)
        os.close(write_fd)
