# kTAMV: tool alignment using machine vision
#
# A Klippy extra: the [ktamv] section starts the vision helper
# (python -m ktamv_helper) as a child process, talks to it with one JSON
# object per line over its stdin/stdout (docs/protocol.md) and waits for
# replies through Klipper's reactor, so Klipper never blocks on the camera.
#
# This file may be distributed under the terms of the GNU GPLv3 license.
import atexit, json, logging, math, os, shlex, shutil, subprocess, time
import weakref

PROTOCOL_VERSION = 1
# Most bytes kept from one unterminated helper output line (the protocol
# caps a line at 1 MiB; anything longer is garbage).
MAX_LINE_BYTES = 4 * 1024 * 1024
READ_CHUNK = 65536
MAX_READS_PER_CALL = 16
# Helper stderr lines copied into klippy.log per LOG_WINDOW seconds.
MAX_LOG_LINES = 200
LOG_WINDOW = 10.
# Helper restarts allowed within RESTART_WINDOW seconds before giving up.
MAX_STARTS = 3
RESTART_WINDOW = 60.
# Longest klippy:disconnect waits for the helper to exit, seconds.
STOP_WAIT = 0.5
# Unanswered requests in a row after which the helper counts as wedged.
MAX_TIMEOUTS = 2
DEFAULT_HELPER_VENV = "~/ktamv-env/bin/python"
# Detection errors that mean "this frame shows no usable nozzle" (a
# calibration point is skipped), unlike camera or helper failures.
# Helper errors that mean "no trustworthy nozzle in this picture": a
# calibration point with one is skipped, not a reason to stop.
NO_NOZZLE_CODES = ("nozzle_not_found", "no_consensus", "nozzle_ambiguous",
                   "nozzle_size_mismatch", "nozzle_not_where_expected")
DEFAULT_TOOL_NAME = "default"
# The bore's diameter (mm) when neither [ktamv] nor the active extruder
# names one.
DEFAULT_NOZZLE_DIAMETER = 0.4
# A stored detection stands in for a new one (same place, tool, camera,
# settled) for at most this long: the printer may be bumped meanwhile.
DETECTION_MAX_AGE = 5.
# A frozen picture: after a move that should shift the bore image by at
# least 2 * STILL_PX, it moved less than STILL_PX or FROZEN_FRACTION of it.
STILL_PX = 0.5
FROZEN_FRACTION = 0.1
# After a centring move the nozzle is looked for only within this many px,
# or this fraction of the move, of where the camera model puts it: a
# look-alike elsewhere (a smudge on the tip face, dirt) is then no rival.
PREDICTION_PX = 4.0
PREDICTION_SCALE = 0.2
# Several bores in view before centring: a probe move shifts the picture by
# at least this many px (and twice the largest one's radius), beyond the
# prediction's reach, so only the nozzle shows up where the model puts it.
PROBE_PX = 20.0
# An ambiguous calibration start is resolved by its first move: a round
# thing within RIGID_SAME_PX of where it was stayed put (not the nozzle);
# the nozzle reappears at least RIGID_MIN_SHIFT_PX away with its radius
# within RIGID_RADIUS (a fraction) of what it was.
RIGID_SAME_PX = 1.0
RIGID_MIN_SHIFT_PX = 2.0
RIGID_RADIUS = 0.2
# Calibration moves keep the bore CALIB_ROOM_RADII of its radii inside the
# frame (its face shows round it) or, for a bore too big for that (a
# microscope's view, where half its rim suffices), move it at most
# CALIB_MIN_ROOM of the frame's short side; never on a circle smaller than
# CALIB_MIN_RADIUS mm (G-code's usual resolution).
CALIB_ROOM_RADII = 2.
CALIB_MIN_ROOM = 0.1
CALIB_MIN_RADIUS = 0.001

def _load_limits():
    # The helper's limits.py (no imports) is the one source of the limits
    # both halves share; install.sh links this file into the checkout.
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)),
                        "ktamv_helper", "limits.py")
    try:
        spec = importlib.util.spec_from_file_location("ktamv_limits", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (OSError, ImportError, AttributeError) as e:
        raise ImportError("kTAMV cannot read %s (%s): ktamv.py must be the "
                          "link install.sh makes into the kTAMV checkout."
                          % (path, e))
    return module

_LIMITS = _load_limits()
MIN_MM_PER_PX = _LIMITS.MIN_MM_PER_PX
MAX_MM_PER_PX = _LIMITS.MAX_MM_PER_PX
# At most this many machine.moves per request (the sim camera's replay).
MAX_MOVES = _LIMITS.MAX_MOVES
# The shift the helper needs to see to measure the camera latency, px.
LATENCY_SHIFT_PX = _LIMITS.LATENCY_SHIFT_PX
# A bore whose blur (sigma: the edge's 25-75 % width over 1.349) is at
# least this fraction of its radius is measured towards the dim side of an
# unevenly lit tip face (docs/benchmarks.md, 2026-12-06: 0.12 px for a 4 px
# bore at sigma 1.5, 0.7 px for a 2.3 px one; under 0.02 px from 8 px up):
# centring says so.
SOFT_BORE_BLUR = 1. / 3.
EDGE_WIDTH_PER_SIGMA = 1.349
SHARP_BORE_PX = 8
# The default of min_radius, px (see limits.py for why 3).
DEFAULT_MIN_RADIUS = _LIMITS.DEFAULT_MIN_RADIUS

class HelperFailure(Exception):
    """A request that did not produce a result; ``message`` is for users,
    ``details`` the helper's machine-readable error.details."""
    def __init__(self, code, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details if isinstance(details, dict) else {}

# Helpers still alive, killed at interpreter exit as a backstop for
# klippy:disconnect (a WeakSet so finished ones do not linger).
_live_helpers = weakref.WeakSet()

def _kill_live_helpers():
    for helper in list(_live_helpers):
        helper.kill()

atexit.register(_kill_live_helpers)

# Killed helpers that had not exited when Klippy's thread stopped waiting
# (HelperProcess.stop); whoever starts a helper next collects them.
_orphans = []

def _reap_orphans():
    for proc in list(_orphans):
        if proc.poll() is not None:
            logging.info("ktamv: helper pid %d ended with exit code %s",
                         proc.pid, proc.returncode)
            _orphans.remove(proc)

def _set_nonblock(fd):
    import fcntl
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)

######################################################################
# Helper process: spawn, line IO through the reactor, requests, restart
######################################################################

class HelperOutput:
    """Reading the helper's stdout (protocol lines) and stderr (copied into
    klippy.log, capped) from reactor fd callbacks; part of HelperProcess."""
    def _read_fd(self, fd):
        """Read what is there; returns (complete lines, eof)."""
        chunks = []
        eof = False
        # Bounded, so a flood of output cannot hold the reactor; the
        # reactor calls again while more is waiting.
        for _ in range(MAX_READS_PER_CALL):
            try:
                data = os.read(fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(data) < READ_CHUNK:
                break
        data = self.buffers.get(fd, b"") + b"".join(chunks)
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE_BYTES:
            logging.warning("ktamv: discarding %d bytes of helper output "
                            "without a line end", len(rest))
            rest = b""
        self.buffers[fd] = rest
        return lines, eof
    def _read_stderr(self, eventtime, fd=None):
        if fd is None:
            if self.proc is None:
                return
            fd = self.proc.stderr.fileno()
        lines, eof = self._read_fd(fd)
        now = self.reactor.monotonic()
        if now - self.log_window_start > LOG_WINDOW:
            if self.log_suppressed:
                logging.info("ktamv: %d more helper log lines were not "
                             "copied into this log", self.log_suppressed)
            self.log_window_start = now
            self.log_lines = self.log_suppressed = 0
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if not text:
                continue
            # A chatty helper must not fill the SD card with klippy.log.
            if self.log_lines >= MAX_LOG_LINES:
                self.log_suppressed += 1
                continue
            self.log_lines += 1
            logging.info("ktamv helper: %s", text[:2000])
        if eof and self.proc is not None:
            # Keep waiting for stdout's EOF, which ends the helper's life.
            # Unregistering the fd being served is safe in the reactor.
            for handle in list(self.fd_handles):
                if handle.fd == fd:
                    self.reactor.unregister_fd(handle)
                    self.fd_handles.remove(handle)
    def _read_stdout(self, eventtime):
        if self.proc is None:
            return
        proc = self.proc
        lines, eof = self._read_fd(proc.stdout.fileno())
        for line in lines:
            self._handle_line(line)
        if eof and self.proc is proc:
            code = proc.poll()
            reason = "The vision helper stopped unexpectedly"
            if code is not None:
                reason += " (exit code %s)" % (code,)
            if code in (126, 127):
                reason += (": its command could not be run; check "
                           "helper_python / helper_command in [ktamv]")
            reason += ("; its last words are in klippy.log (lines starting "
                       "with 'ktamv helper:').")
            self._helper_gone(reason)
    def _handle_line(self, line):
        try:
            msg = json.loads(line.decode("utf-8"))
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            logging.warning("ktamv: ignoring a helper output line that is not"
                            " a protocol message: %r", line[:200])
            return
        if "event" in msg:
            self._handle_event(msg)
            return
        req_id = msg.get("id")
        completion = self.pending.pop(req_id, None)
        if completion is None:
            logging.info("ktamv: ignoring a late or unknown reply id %r",
                         req_id)
            return
        completion.complete(msg)
    def _handle_event(self, msg):
        event = msg.get("event")
        if event == "ready":
            if msg.get("protocol") != PROTOCOL_VERSION:
                self.protocol_error = (
                    "The vision helper speaks protocol %r but this ktamv.py "
                    "needs %d; update both from the same kTAMV checkout."
                    % (msg.get("protocol"), PROTOCOL_VERSION))
                self._kill(self.protocol_error)
                return
            self.state = "ready"
            self.last_error = ""  # a past failure is healed now
            self.ready_info = dict(msg)
            logging.info("ktamv: vision helper %s ready (pid %s, python %s)",
                         msg.get("helper"), msg.get("pid"), msg.get("python"))
            self.ready_completion.complete(msg)
            if self.on_ready is not None:
                self.on_ready()
        elif event == "log":
            logging.info("ktamv helper [%s]: %s", msg.get("level", "info"),
                         msg.get("message"))
        elif event == "error":
            logging.warning("ktamv helper reported %s: %s", msg.get("code"),
                            msg.get("message"))
        else:
            logging.info("ktamv: ignoring helper event %r", event)

def _reap_later(reactor, proc, attempts=50):
    """Collect a helper's exit status from a reactor timer, never blocking;
    a process that does not exit after ``attempts`` checks is killed."""
    if proc.poll() is not None:
        logging.info("ktamv: helper pid %d ended with exit code %s",
                     proc.pid, proc.returncode)
        return
    state = {"left": attempts}
    def check(eventtime):
        if proc.poll() is not None:
            logging.info("ktamv: helper pid %d ended with exit code %s",
                         proc.pid, proc.returncode)
            reactor.unregister_timer(timer)
            return reactor.NEVER
        state["left"] -= 1
        if state["left"] <= 0:
            logging.warning("ktamv: helper pid %d does not exit; killing it",
                            proc.pid)
            try:
                proc.kill()
            except OSError:
                pass
            state["left"] = 10
        return eventtime + 0.1
    timer = reactor.register_timer(check, reactor.monotonic() + 0.1)

class HelperProcess(HelperOutput):
    """The helper child process: start, ready, requests, restart, stop."""
    def __init__(self, reactor, argv, cwd=None, env=None, startup_timeout=10.,
                 on_ready=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.cwd = cwd
        self.env = env
        self.startup_timeout = startup_timeout
        self.on_ready = on_ready
        self.proc = None
        self.state = "stopped"
        self.last_error = ""
        self.ready_info = {}
        self.ready_completion = None
        self.pending = {}
        self.next_id = 1
        self.start_times = []
        self.fd_handles = []
        self.buffers = {}
        self.protocol_error = None
        self.timeouts = 0
        self.log_window_start = 0.
        self.log_lines = self.log_suppressed = 0
        # Set when a crash loop made kTAMV stop restarting the helper; only
        # RESTART (a new object) or KTAMV_TEST (reset) clears it.
        self.gave_up = None
    # Lifecycle
    def reset(self):
        """Forget past crashes so the next command may start the helper."""
        self.gave_up = None
        self.start_times = []
    def start(self):
        """Spawn the helper; returns at once (the ready event comes later)."""
        _reap_orphans()
        if self.gave_up is not None:
            self.state = "failed"
            raise HelperFailure("helper_failed", self.gave_up)
        now = self.reactor.monotonic()
        self.start_times = [t for t in self.start_times
                            if now - t < RESTART_WINDOW]
        if len(self.start_times) >= MAX_STARTS:
            self.state = "failed"
            self.gave_up = (
                "The vision helper stopped %d times within %d s, so kTAMV "
                "stopped restarting it. Last problem: %s Check the lines "
                "starting with 'ktamv helper:' in klippy.log, fix the cause "
                "and run KTAMV_TEST or RESTART." % (
                    len(self.start_times), RESTART_WINDOW, self.last_error))
            raise HelperFailure("helper_failed", self.gave_up)
        self.start_times.append(now)
        program = self.argv[-3] if self.argv[-2:] == ["-m", "ktamv_helper"] \
            else self.argv[0]
        if os.path.isabs(program) and not os.access(program, os.X_OK):
            self.state = "failed"
            self.last_error = ("Cannot start the vision helper: %s does not "
                               "exist or is not executable." % (program,))
            raise HelperFailure("helper_failed", self.last_error + (
                " Check helper_python / helper_command in [ktamv] (install.sh"
                " creates %s)." % (DEFAULT_HELPER_VENV,)))
        try:
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=self.cwd, env=self.env,
                close_fds=True)
        except OSError as e:
            self.state = "failed"
            self.last_error = ("Cannot start the vision helper %r: %s."
                               % (" ".join(self.argv), e.strerror or e))
            raise HelperFailure("helper_failed", self.last_error + (
                " Check helper_python / helper_command in [ktamv] (install.sh"
                " creates %s)." % (DEFAULT_HELPER_VENV,)))
        self.proc = proc
        _live_helpers.add(self)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            _set_nonblock(f.fileno())
        self.buffers = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
        self.fd_handles = [
            self.reactor.register_fd(proc.stdout.fileno(), self._read_stdout),
            self.reactor.register_fd(proc.stderr.fileno(), self._read_stderr)]
        self.ready_completion = self.reactor.completion()
        self.ready_info = {}
        self.protocol_error = None
        self.state = "starting"
        logging.info("ktamv: started vision helper pid %d: %s", proc.pid,
                     " ".join(self.argv))
    def get_pid(self):
        if self.proc is None:
            return None
        return self.proc.pid
    def is_running(self):
        return self.proc is not None and self.state in ("starting", "ready")
    def ensure_ready(self):
        """Start the helper if needed and wait (bounded) for its ready."""
        if not self.is_running():
            self.start()
        if self.state == "ready":
            return
        deadline = self.reactor.monotonic() + self.startup_timeout
        info = self.ready_completion.wait(deadline)
        if self.state == "ready":
            return
        if info is None and self.is_running():
            self._kill("The vision helper did not announce itself within "
                       "%.0f s." % (self.startup_timeout,))
        hint = ""
        if "klippy.log" not in self.last_error:
            hint = " See the lines starting with 'ktamv helper:' in klippy.log."
        raise HelperFailure("helper_failed", self.last_error + hint)
    def _helper_gone(self, reason, deferred=True):
        """Forget the process: close pipes, fail pending requests, reap."""
        if self.proc is None:
            return
        proc = self.proc
        self.proc = None
        handles = self.fd_handles
        self.fd_handles = []
        def close_pipes(eventtime=None):
            for handle in handles:
                self.reactor.unregister_fd(handle)
            # A dying helper's last stderr lines say why; keep them.
            try:
                self._read_stderr(eventtime, proc.stderr.fileno())
            except (OSError, ValueError):
                pass
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
        if deferred:
            # The reactor may be part-way through one poll's results, which
            # can include these fds: unregister only after it finished.
            self.reactor.register_callback(close_pipes)
        else:
            close_pipes()
        if self.protocol_error:
            reason = self.protocol_error
        self.last_error = reason
        if self.state != "stopped":
            self.state = "exited"
        logging.warning("ktamv: %s", reason)
        pending = self.pending
        self.pending = {}
        failure = {"error": {"code": "helper_died", "message": reason + (
            " The command was not completed; kTAMV restarts the helper on"
            " the next command.")}}
        for completion in pending.values():
            completion.complete(failure)
        if self.ready_completion is not None:
            self.ready_completion.complete(None)
        _reap_later(self.reactor, proc)
    def _kill(self, reason):
        """Kill a misbehaving helper now and forget it at once."""
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self._helper_gone(reason)
    def stop(self):
        """Ask the helper to exit, then terminate/kill it: at most
        STOP_WAIT seconds of Klippy's thread at klippy:disconnect (the
        reactor no longer runs, so this waits with the standard library);
        a process not reaped by then is reaped later (_reap_orphans)."""
        proc = self.proc
        self.state = "stopped"
        if proc is None:
            return
        try:
            self._write_line({"id": 0, "method": "shutdown"})
        except HelperFailure:
            pass
        try:
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + STOP_WAIT
        for signal_it, share in ((None, 0.4), (proc.terminate, 0.4),
                                 (proc.kill, 1.)):
            if signal_it is not None:
                try:
                    signal_it()
                except OSError:
                    pass
            left = deadline - time.monotonic()
            try:
                proc.wait(max(0.01, share * left))
                break
            except subprocess.TimeoutExpired:
                continue
        self._helper_gone("The vision helper was stopped (exit code %s)."
                          % (proc.returncode,), deferred=False)
        if proc.returncode is None:
            _orphans.append(proc)
        _live_helpers.discard(self)
    def kill(self):
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()
                proc.wait(2.)
            except (OSError, subprocess.TimeoutExpired):
                pass
    # Requests
    def _write_line(self, msg):
        proc = self.proc
        if proc is None:
            raise HelperFailure("helper_died", "The vision helper is not "
                                "running.")
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        try:
            while view:
                written = os.write(proc.stdin.fileno(), view)
                view = view[written:]
        except (BlockingIOError, InterruptedError):
            # Requests are small; a full pipe means the helper stopped
            # reading. Never wait for it inside Klippy.
            reason = ("The vision helper stopped reading requests; it was "
                      "stopped and will be restarted on the next command.")
            self._kill(reason)
            raise HelperFailure("helper_stuck", reason)
        except OSError as e:
            raise HelperFailure("helper_died", "Cannot send to the vision "
                                "helper (%s); it will be restarted on the "
                                "next command." % (e.strerror or e,))
    def send(self, method, params=None):
        """Send a request without waiting; returns its completion."""
        req_id = self.next_id
        self.next_id += 1
        msg = {"id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        completion = self.reactor.completion()
        self.pending[req_id] = completion
        try:
            self._write_line(msg)
        except HelperFailure:
            self.pending.pop(req_id, None)
            raise
        return req_id, completion
    def request(self, method, params=None, timeout=10.):
        """Send a request and wait (through the reactor) for its result.

        Raises HelperFailure with the helper's sentence on an error reply,
        on timeout or when the helper dies meanwhile.
        """
        self.ensure_ready()
        req_id, completion = self.send(method, params)
        reply = completion.wait(self.reactor.monotonic() + timeout)
        if reply is None:
            self.pending.pop(req_id, None)
            self.timeouts += 1
            msg = ("The vision helper did not answer %s within %.1f s; any "
                   "late answer will be ignored. Check the camera and the "
                   "lines starting with 'ktamv helper:' in klippy.log."
                   % (method, timeout))
            if self.timeouts >= MAX_TIMEOUTS:
                # The helper bounds its own work, so repeated silence means
                # it is wedged: replace it rather than wait forever.
                msg += (" It missed %d answers in a row and was stopped; "
                        "the next command starts it again." % self.timeouts)
                self._kill(msg)
                self.timeouts = 0
            raise HelperFailure("helper_timeout", msg)
        self.timeouts = 0
        if "error" in reply:
            error = reply.get("error")
            if not isinstance(error, dict):
                error = {"code": "internal_error", "message": str(error)}
            raise HelperFailure(str(error.get("code", "internal_error")),
                                str(error.get("message", "unknown error")),
                                error.get("details"))
        result = reply.get("result")
        if not isinstance(result, dict):
            result = {"value": result}
        return result

######################################################################
# Camera model: pixels to machine millimetres
######################################################################

class CameraModel:
    """The 2x2 linear part [[a, b], [d, e]] of the pixel to mm map, and
    the [width, height] of the frames it was measured on (None: unknown,
    a camera_matrix saved before kTAMV recorded it)."""
    def __init__(self, matrix, fit=None, frame_size=None):
        (a, b), (d, e) = matrix
        self.matrix = [[float(a), float(b)], [float(d), float(e)]]
        self.fit = dict(fit or {})
        self.frame_size = list(frame_size) if frame_size else None
    @classmethod
    def from_flat(cls, values):
        a, b, d, e = values
        return cls([[a, b], [d, e]])
    def flat(self):
        (a, b), (d, e) = self.matrix
        return [a, b, d, e]
    def determinant(self):
        (a, b), (d, e) = self.matrix
        return a * e - b * d
    def mm_per_px(self):
        return math.sqrt(abs(self.determinant()))
    def rotation_deg(self):
        (a, b), (d, e) = self.matrix
        return math.degrees(math.atan2(d, a))
    def mirrored(self):
        return self.determinant() > 0.
    def mm_to_px(self, dx, dy):
        """Image shift (du, dv) that a toolhead move of (dx, dy) causes."""
        (a, b), (d, e) = self.matrix
        det = a * e - b * d
        return (e * dx - b * dy) / det, (a * dy - d * dx) / det
    def px_to_mm(self, du, dv):
        """Toolhead move (dx, dy) that shifts the nozzle image by (du, dv)."""
        (a, b), (d, e) = self.matrix
        return a * du + b * dv, d * du + e * dv
    def config_value(self):
        return ", ".join("%.9g" % (v,) for v in self.flat())
    def summary(self):
        res = {'matrix': [list(row) for row in self.matrix],
               'mm_per_px': self.mm_per_px(),
               'rotation_deg': self.rotation_deg(),
               'mirrored': self.mirrored(),
               'frame_size': self.frame_size}
        for key in ('rms_mm', 'max_residual_mm', 'used', 'rejected',
                    'scale_uv'):
            if key in self.fit:
                res[key] = self.fit[key]
        return res

def image_center(frame_size):
    """Centre of a W x H frame in OpenCV pixel coordinates."""
    width, height = frame_size
    return (width - 1) / 2., (height - 1) / 2.

######################################################################
# Motion: homing check, travel fence, backlash approach
######################################################################

class KtamvMotion:
    def __init__(self, printer, speed, backlash, max_travel):
        self.printer = printer
        self.speed = speed
        self.backlash = backlash
        self.max_travel = max_travel
        self.toolhead = None
        self.step_dist = 0.
        self.moves = []
        self.fence_start = None
    def handle_connect(self):
        self.toolhead = self.printer.lookup_object('toolhead')
    def _xy_motors(self, coord):
        """The motors an XY move from ``coord`` turns, as step grids.

        Returns (motors, grid_known). Each motor is (dp/dx, dp/dy, stepper
        position, position of its step 0, step distance), read from
        Klipper's own steppers, so it follows the kinematics (cartesian,
        corexy, hybrid-corexy, the active IDEX carriage) without knowing
        them. grid_known is False when a stepper lacks the methods this
        needs or reports an inconsistent step size.
        """
        motors = []
        grid_known = True
        x, y, z = coord
        for stepper in self.toolhead.get_kinematics().get_steppers():
            try:
                calc = stepper.calc_position_from_coord
                base = calc([x, y, z])
                dpdx = calc([x + 1., y, z]) - base
                dpdy = calc([x, y + 1., z]) - base
                step = float(stepper.get_step_dist())
            except Exception:
                return [], False
            if abs(dpdx) < 1e-9 and abs(dpdy) < 1e-9:
                continue  # Z, extruders, a parked IDEX carriage
            try:
                step0 = stepper.mcu_to_commanded_position(0)
                step1 = stepper.mcu_to_commanded_position(1)
            except Exception:
                step0 = step1 = None
                grid_known = False
            if not step > 0.:
                return [], False
            if step1 is not None and abs(step1 - step0 - step) > 1e-6 * step:
                grid_known = False
            motors.append((dpdx, dpdy, base, step0, step))
        return motors, grid_known
    def snap_xy(self, x, y):
        """The point nearest (x, y) where every motor holds a whole step.

        The motors can only hold whole (micro)steps, so commanding such a
        point makes the commanded position the physical one; the image then
        measures the remaining sub-step error instead of it hiding in the
        rounding. Returns (x, y, snapped); (x, y) is returned unchanged
        (snapped False) when the kinematics do not give one such point
        (delta and other non-linear kinematics, motors on one axis whose
        steps disagree, steppers that cannot tell their step grid).
        """
        z = self.position()[2]
        motors, grid_known = self._xy_motors((x, y, z))
        self.step_dist = min([m[4] for m in motors]) if motors else 0.
        if not motors or not grid_known:
            return x, y, False
        first = motors[0]
        second = None
        for motor in motors[1:]:
            if abs(first[0] * motor[1] - first[1] * motor[0]) > 1e-6:
                second = motor
                break
        if second is None:
            return x, y, False
        def to_grid(motor):
            dpdx, dpdy, pos, step0, step = motor
            return step0 + round((pos - step0) / step) * step - pos
        # Solve the 2x2 system that moves the two motors onto their grids.
        d1, d2 = to_grid(first), to_grid(second)
        det = first[0] * second[1] - first[1] * second[0]
        dx = (d1 * second[1] - d2 * first[1]) / det
        dy = (first[0] * d2 - second[0] * d1) / det
        sx, sy = x + dx, y + dy
        # Every motor (a third one, a second Y motor) must land on its grid
        # too, and the point must be within a step of the target: otherwise
        # the kinematics are not what this assumes, so do not snap.
        check, grid_known = self._xy_motors((sx, sy, z))
        if not grid_known or len(check) != len(motors):
            return x, y, False
        for motor in check:
            if abs(to_grid(motor)) > 1e-3 * motor[4]:
                return x, y, False
        if math.hypot(dx, dy) > 2. * max(m[4] for m in motors):
            return x, y, False
        return sx, sy, True
    def cannot_improve(self, x, y):
        """True when a move to (x, y) would not change the motors' steps."""
        pos = self.position()
        sx, sy, snapped = self.snap_xy(x, y)
        if snapped:
            return abs(sx - pos[0]) < 1e-9 and abs(sy - pos[1]) < 1e-9
        half = 0.5 * self.step_dist
        return abs(x - pos[0]) < half and abs(y - pos[1]) < half
    def check_running(self):
        # A command waiting for the camera lets the reactor run; an M112 or
        # a shutdown may have happened meanwhile: never move after it.
        if self.printer.is_shutdown():
            raise self.printer.command_error(
                "kTAMV stopped: Klipper was shut down during the command. "
                "Nothing more was moved; run FIRMWARE_RESTART.")
    def position(self):
        return self.toolhead.get_position()
    def check_homed(self):
        eventtime = self.printer.get_reactor().monotonic()
        homed = self.toolhead.get_status(eventtime)['homed_axes']
        if 'x' not in homed or 'y' not in homed:
            raise self.printer.command_error(
                "kTAMV needs X and Y homed before it moves the toolhead; run"
                " G28 first.")
    def begin(self):
        """Start a command's travel fence at the current position."""
        self.check_homed()
        pos = self.position()
        self.fence_start = (pos[0], pos[1])
        return self.fence_start
    def waypoints(self, x, y):
        """The points a move to (x, y) passes, backlash approach first."""
        if self.backlash <= 0.:
            return [(x, y)]
        pos = self.position()
        b = self.backlash
        # Arrive moving +X and +Y by at least the backlash on both axes, so
        # the slack is always taken up the same way.
        if pos[0] <= x - b and pos[1] <= y - b:
            return [(x, y)]
        return [(x - b, y - b), (x, y)]
    def check_targets(self, points, what="move"):
        eventtime = self.printer.get_reactor().monotonic()
        status = self.toolhead.get_status(eventtime)
        amin = status.get('axis_minimum')
        amax = status.get('axis_maximum')
        for px, py in points:
            if self.fence_start is not None and self.max_travel > 0.:
                dist = math.hypot(px - self.fence_start[0],
                                  py - self.fence_start[1])
                if dist > self.max_travel + 1e-9:
                    raise self.printer.command_error(
                        "kTAMV %s to X%.3f Y%.3f refused: it is %.3f mm from"
                        " where this command started (X%.3f Y%.3f), more "
                        "than max_travel = %.3f mm. Nothing was moved for "
                        "this step; check the camera calibration or raise "
                        "max_travel." % (what, px, py, dist,
                                         self.fence_start[0],
                                         self.fence_start[1],
                                         self.max_travel))
            if amin is not None and amax is not None:
                if (px < amin[0] or px > amax[0] or py < amin[1]
                    or py > amax[1]):
                    raise self.printer.command_error(
                        "kTAMV %s to X%.3f Y%.3f refused: outside the "
                        "printer's limits X%.3f..%.3f Y%.3f..%.3f."
                        % (what, px, py, amin[0], amax[0], amin[1], amax[1]))
    def move_to(self, x, y, what="move"):
        """Move XY through the toolhead, backlash-proof, and wait for it."""
        self.check_running()
        # Homing can be lost between a command's moves (motors switched
        # off by a macro or a driver fault): say so before trying.
        self.check_homed()
        points = [self.snap_xy(px, py)[:2]
                  for px, py in self.waypoints(x, y)]
        self.check_targets(points, what)
        for px, py in points:
            self.toolhead.manual_move([px, py, None], self.speed)
            self.moves.append(self.toolhead.get_position()[:3])
        del self.moves[:-MAX_MOVES]  # only the sim camera takes them
        self.toolhead.wait_moves()
        self.check_running()
    def take_moves(self):
        """Positions commanded since the last request (for the sim camera)."""
        moves = self.moves[-MAX_MOVES:]
        self.moves = []
        return moves

######################################################################
# Statistics of repeated offset measurements
######################################################################

def offset_statistics(samples):
    """Mean, sample standard deviation and range of [(x, y), ...]."""
    count = len(samples)
    res = {'count': count}
    if not count:
        return res
    mean = [sum(s[i] for s in samples) / count for i in (0, 1)]
    if count > 1:
        stdev = [math.sqrt(sum((s[i] - mean[i]) ** 2 for s in samples)
                           / (count - 1)) for i in (0, 1)]
    else:
        stdev = [0., 0.]
    rng = [max(s[i] for s in samples) - min(s[i] for s in samples)
           for i in (0, 1)]
    res.update({'mean': mean, 'stdev': stdev, 'range': rng})
    return res

######################################################################
# Options of the [ktamv] section
######################################################################

class KtamvOptions:
    """The [ktamv] options, read and bounded once at start-up."""
    def __init__(self, config):
        self.name = config.get_name()
        self.camera_url = config.get('nozzle_cam_url')
        self.move_speed = config.getfloat('move_speed', 1800., above=0.,
                                          maxval=60000.)
        self.detection_tolerance = config.getfloat(
            'detection_tolerance', 1., minval=0., maxval=50.)
        # The bore radius range searched, px: a low-resolution endoscope
        # whose bore is ~2 px says so; max 0 = up to 0.7 of the frame height.
        self.min_radius = config.getfloat('min_radius', DEFAULT_MIN_RADIUS,
                                          minval=1.5, maxval=1000.)
        self.max_radius = config.getfloat('max_radius', 0., minval=0.,
                                          maxval=5000.)
        if self.max_radius and self.max_radius <= self.min_radius:
            raise config.error(
                "Option 'max_radius' in section '%s' must be 0 (automatic) "
                "or above min_radius (%g), not %g"
                % (self.name, self.min_radius, self.max_radius))
        ignored = [opt for opt in ('server_url', 'send_frame_to_cloud')
                   if config.get(opt, None) is not None]
        if ignored:
            logging.warning(
                "ktamv: option(s) %s are ignored: the vision work runs in a "
                "helper process started by Klipper and nothing is uploaded.",
                ", ".join(ignored))
        self._read_helper(config)
        self._read_measuring(config)
        self.camera_matrix = self._read_matrix(config)
    def _read_helper(self, config):
        self.helper_python = config.get('helper_python', None)
        self.helper_command = config.get('helper_command', None)
        self.helper_nice = config.getint('helper_nice', 10, minval=0,
                                         maxval=19)
        self.helper_timeout = config.getfloat('helper_timeout', 10.,
                                              minval=1., maxval=300.)
        self.camera_timeout = config.getfloat('camera_timeout', 5.,
                                              minval=0.1, maxval=30.)
        self.debug_dir = config.get('debug_dir', None)
        self.preview_host = config.get('preview_host', '127.0.0.1')
        self.preview_port = config.getint('preview_port', 0, minval=0,
                                          maxval=65535)
        self.preview_fps = config.getfloat('preview_fps', 10., minval=0.5,
                                           maxval=30.)
        self.debug_keep = config.getint('debug_keep', 20, minval=1,
                                        maxval=10000)
    def _read_measuring(self, config):
        self.settle_time = config.getfloat('settle_time', 0.3, minval=0.,
                                           maxval=10.)
        self.detection_frames = config.getint('detection_frames', 3,
                                              minval=1, maxval=50)
        self.calibration_radius = config.getfloat(
            'calibration_radius', 0.5, above=0., maxval=10.)
        self.calibration_points = config.getint('calibration_points', 10,
                                                minval=4, maxval=50)
        self.center_tolerance = config.getfloat('center_tolerance', 0.3,
                                                above=0., maxval=50.)
        self.center_max_moves = config.getint('center_max_moves', 8,
                                              minval=1, maxval=50)
        # The bore's size tells it from the tip face and the cone once the
        # camera's scale is known; NOZZLE_DIAMETER= overrides it per command.
        # Unset, each tool's own [extruder] nozzle_diameter is used.
        self.nozzle_diameter = config.getfloat('nozzle_diameter', None,
                                               minval=0.1, maxval=2.)
        self.verify_tolerance = config.getfloat('verify_tolerance', 0.01,
                                                above=0., maxval=1.)
        self.backlash = config.getfloat('backlash_approach', 0.5, minval=0.,
                                        maxval=5.)
        self.max_travel = config.getfloat('max_travel', 5., above=0.,
                                          maxval=1000.)
        self.camera_position = config.getfloatlist('camera_position', None,
                                                   count=2)
        self.tool_status = config.get('tool_status', '').strip()
        if self.tool_status and '.' not in self.tool_status:
            raise config.error(
                "Option 'tool_status' in section '%s' must look like "
                "OBJECT.FIELD (e.g. gcode_macro _KTAMV_TOOL.current), not %r"
                % (self.name, self.tool_status))
    def _read_matrix(self, config):
        # Read even without a matrix, so a leftover one is no unknown option.
        size = config.getintlist('camera_frame_size', None, count=2)
        if size is not None and not all(8 <= v <= 20000 for v in size):
            raise config.error(
                "Option 'camera_frame_size' in section '%s' must be the "
                "camera's width, height in pixels, not %s"
                % (self.name, ", ".join(map(str, size))))
        matrix = config.getfloatlist('camera_matrix', None, count=4)
        if matrix is None:
            return None
        model = CameraModel.from_flat(matrix)
        if not MIN_MM_PER_PX <= model.mm_per_px() <= MAX_MM_PER_PX:
            raise config.error(
                "Option 'camera_matrix' in section '%s' gives %.5f mm per "
                "pixel; a usable nozzle camera has %g..%g. Delete the option "
                "and run KTAMV_CALIB_CAMERA again." % (
                    self.name, model.mm_per_px(), MIN_MM_PER_PX,
                    MAX_MM_PER_PX))
        model.frame_size = size
        return model
    # The helper's command line
    def repo_dir(self):
        return os.path.dirname(os.path.realpath(__file__))
    def helper_argv(self):
        if self.helper_command:
            argv = shlex.split(self.helper_command)
        else:
            argv = [self._helper_python(), "-m", "ktamv_helper"]
        nice = shutil.which("nice")
        if self.helper_nice and nice:
            # Vision work must never take CPU time from Klippy itself.
            argv = [nice, "-n", str(self.helper_nice)] + argv
        return argv
    def _helper_python(self):
        if self.helper_python:
            return os.path.expanduser(self.helper_python)
        for candidate in (DEFAULT_HELPER_VENV,
                          os.path.join(self.repo_dir(), ".venv", "bin",
                                       "python")):
            path = os.path.expanduser(candidate)
            if os.path.exists(path):
                return path
        # Starting fails with a sentence naming the option to set.
        return os.path.expanduser(DEFAULT_HELPER_VENV)
    def helper_env(self):
        env = dict(os.environ)
        repo = self.repo_dir()
        old = env.get('PYTHONPATH')
        env['PYTHONPATH'] = repo + (os.pathsep + old if old else "")
        env['PYTHONUNBUFFERED'] = '1'
        return env
    def configure_params(self):
        params = {'camera_url': self.camera_url,
                  'camera_timeout': self.camera_timeout,
                  'preview_host': self.preview_host,
                  'preview_port': self.preview_port,
                  'preview_fps': self.preview_fps,
                  'debug_dir': self.debug_dir or None,
                  'debug_keep': self.debug_keep,
                  'target_tolerance': self.center_tolerance,
                  'min_radius': self.min_radius,
                  'max_radius': self.max_radius}
        if self.detection_tolerance > 0.:
            params['detection_tolerance'] = self.detection_tolerance
        return params

######################################################################
# Requests for commands: configure handshake, machine state, errors
######################################################################

class HelperClient:
    """Commands' requests to the helper: it is started when needed, kept
    configured (a handshake on every ready) and every wait is bounded."""
    def __init__(self, printer, opts, helper, motion, tools):
        self.printer = printer
        self.reactor = printer.get_reactor()
        self.opts = opts
        self.helper = helper
        self.motion = motion
        self.tools = tools
        self.configure_pending = None
        self.configure_error = None
        self.preview_info = None
        helper.on_ready = self.send_configure
    def machine_state(self):
        """The toolhead position and tool, for the sim:// camera."""
        toolhead = self.printer.lookup_object('toolhead')
        machine = {'position': [float(v) for v in
                                toolhead.get_position()[:3]],
                   'tool': self.tools.current(strict=False)}
        moves = self.motion.take_moves()
        if moves:
            machine['moves'] = [[float(v) for v in m] for m in moves]
        return machine
    def _add_machine(self, params):
        # Only the simulated camera renders from the machine state; real
        # cameras never get it (simulation stays off the production path).
        if self.opts.camera_url.strip().lower().startswith('sim:'):
            params['machine'] = self.machine_state()
    def send_configure(self):
        # Runs from the reactor's fd callback: send, never wait here, and
        # never let an exception escape into the reactor.
        try:
            params = self.opts.configure_params()
            self._add_machine(params)
            req_id, completion = self.helper.send('configure', params)
        except HelperFailure as e:
            self.configure_error = e.message
            return
        except Exception as e:
            logging.exception("ktamv: cannot configure the helper")
            self.configure_error = "Cannot configure the helper: %s" % (e,)
            return
        self.configure_pending = completion
        self.configure_error = None
        def check(eventtime):
            reply = completion.wait(eventtime + self.opts.helper_timeout)
            if reply is None:
                self.helper.pending.pop(req_id, None)
                self.configure_error = ("The vision helper did not answer "
                                        "configure.")
            elif 'error' in reply:
                self.configure_error = reply['error'].get('message')
                logging.warning("ktamv: configure failed: %s",
                                self.configure_error)
            else:
                self.preview_info = reply.get('result', {}).get('preview')
                preview_error = (self.preview_info or {}).get('error')
                if preview_error:
                    logging.warning("ktamv: preview: %s", preview_error)
            if self.configure_pending is completion:
                self.configure_pending = None
        self.reactor.register_callback(check)
    def configure_now(self):
        params = self.opts.configure_params()
        self._add_machine(params)
        try:
            result = self.helper.request('configure', params,
                                         self.opts.helper_timeout)
        except HelperFailure as e:
            self.configure_error = e.message
            raise
        self.configure_error = None
        self.preview_info = result.get('preview')
        return result
    def call(self, gcmd, method, params=None, timeout=0.):
        """One helper request for a command; errors become command errors."""
        params = dict(params or {})
        try:
            self.helper.ensure_ready()
            if self.configure_pending is not None:
                self.configure_pending.wait(
                    self.reactor.monotonic() + self.opts.helper_timeout)
            if self.configure_error and method != 'configure':
                # A configure that failed (or never arrived) is retried so
                # a fixed problem heals without RESTART.
                self.configure_now()
            self._add_machine(params)
            result = self.helper.request(method, params,
                                         timeout + self.opts.helper_timeout)
        except HelperFailure as e:
            error = gcmd.error("kTAMV: %s" % (e.message,))
            error.helper_code = e.code  # so callers can tell causes apart
            error.helper_details = e.details
            raise error
        # The reactor ran while waiting: a shutdown meanwhile makes the
        # toolhead position (and so any offset) meaningless.
        self.motion.check_running()
        return result
    def error(self):
        return self.helper.last_error or self.configure_error

######################################################################
# Which tool is active, and its G-code offset
######################################################################
    def self_test(self, gcmd):
        """KTAMV_TEST: versions, preview and one frame."""
        call = self.call
        info = call(gcmd, 'version', {'check_camera': False})
        # The versions first, so they show even when the camera fails.
        gcmd.respond_info(
            "kTAMV helper %s (protocol %s, pid %s): Python %s, OpenCV %s, "
            "NumPy %s, scikit-image %s." % (
                info.get('helper'), info.get('protocol'),
                self.helper.get_pid(), info.get('python'),
                info.get('opencv'), info.get('numpy'), info.get('skimage')))
        preview = info.get('preview') or {}
        if preview.get('error'):
            # Before the grab, so it shows even when the camera fails too.
            gcmd.respond_info("kTAMV preview error: %s" % (preview['error'],))
        timeout = self.opts.camera_timeout
        grab = call(gcmd, 'grab', {'timeout': timeout}, timeout)
        size = grab.get('frame_size') or [0, 0]
        if preview.get('url'):
            preview_text = "Preview: %s (stream %s, snapshot %s)." % (
                preview['url'], preview.get('stream_url'),
                preview.get('snapshot_url'))
        elif preview.get('error'):
            preview_text = "Preview: off (error above)."
        else:
            preview_text = "Preview: off (set preview_port in [ktamv])."
        gcmd.respond_info(
            "Camera %s: got a %dx%d frame, %.3f s old.\n%s" % (
                self.opts.camera_url, size[0], size[1],
                float(grab.get('age', 0.)), preview_text))

class ToolIdentity:
    def __init__(self, printer, tool_status):
        self.printer = printer
        self.reactor = printer.get_reactor()
        self.tool_status = tool_status
    def current(self, strict=True):
        """The active tool's name; ``strict`` refuses an unclear one.

        Measurements (origin, offsets) are strict; labels that only travel
        along with a detection or a request are not, so KTAMV_TEST and
        KTAMV_SIMPLE_NOZZLE_POSITION work with no tool mounted.
        """
        eventtime = self.reactor.monotonic()
        if not self.tool_status:
            try:
                return self._default(eventtime)
            except self.printer.command_error:
                if strict:
                    raise
                return "unknown"
        obj_name, field = self.tool_status.rsplit('.', 1)
        obj = self.printer.lookup_object(obj_name, None)
        if obj is None or not hasattr(obj, 'get_status'):
            raise self.printer.command_error(
                "tool_status in [ktamv] names %r, which is not a printer "
                "object with a status." % (obj_name,))
        status = obj.get_status(eventtime)
        if field not in status:
            raise self.printer.command_error(
                "tool_status in [ktamv]: %r has no field %r (it has: %s)."
                % (obj_name, field, ", ".join(sorted(status)) or "none"))
        value = status[field]
        return str(value) if value is not None else DEFAULT_TOOL_NAME
    def _default(self, eventtime):
        """The active tool's name from what the printer itself reports.

        A tool changer (klipper-toolchanger's ``toolchanger.tool``) names
        the mounted tool; on an IDEX printer the nozzle is the one on the
        PRIMARY carriage (``dual_carriage`` status); otherwise the active
        extruder.
        """
        changer = self.printer.lookup_object('toolchanger', None)
        if changer is not None and hasattr(changer, 'get_status'):
            status = changer.get_status(eventtime)
            if 'tool' in status:
                name = status.get('tool')
                if not name:
                    raise self.printer.command_error(
                        "kTAMV: the tool changer reports no selected tool "
                        "(printer.toolchanger.tool is empty); select the "
                        "tool to measure (e.g. T0) first, or set "
                        "tool_status in [ktamv].")
                name = str(name)
                # klipper-toolchanger names tools after their section.
                if name.startswith('tool ') and len(name) > 5:
                    name = name[5:].strip()
                return name
        primary = self._idex_primary(eventtime)
        if primary:
            return primary
        toolhead = self.printer.lookup_object('toolhead')
        return toolhead.get_extruder().get_name() or DEFAULT_TOOL_NAME
    def _idex_primary(self, eventtime):
        dual = self.printer.lookup_object('dual_carriage', None)
        if dual is None or not hasattr(dual, 'get_status'):
            return None
        status = dual.get_status(eventtime)
        modes = dict((k, v) for k, v in status.items()
                     if k.startswith('carriage_') and isinstance(v, str))
        if not modes and isinstance(status.get('carriages'), dict):
            modes = status['carriages']
        primary = sorted(k for k, v in modes.items() if v == 'PRIMARY')
        copying = sorted(k for k, v in modes.items()
                         if v in ('COPY', 'MIRROR'))
        if copying:
            raise self.printer.command_error(
                "kTAMV: carriage(s) %s are in %s mode, so more than one "
                "nozzle moves; select one carriage with "
                "SET_DUAL_CARRIAGE CARRIAGE=<n> (MODE=PRIMARY) first."
                % (", ".join(copying),
                   "/".join(sorted(set(modes[k] for k in copying)))))
        return "+".join(primary) if primary else None
    def nozzle_diameter(self):
        """The active extruder's ``nozzle_diameter`` in printer.cfg (as
        Klipper parsed it), or None: no extruder, or a size kTAMV does not
        take (outside 0.1-2 mm). A tool changer or IDEX activates the
        tool's own extruder, so each tool names its own nozzle."""
        toolhead = self.printer.lookup_object('toolhead')
        name = toolhead.get_extruder().get_name()
        configfile = self.printer.lookup_object('configfile', None)
        if not name or configfile is None:
            return None
        settings = configfile.get_status(self.reactor.monotonic())['settings']
        value = settings.get(name, {}).get('nozzle_diameter')
        if isinstance(value, (int, float)) and 0.1 <= value <= 2.:
            return float(value)
        return None
    def gcode_offset(self):
        """The G-code XY offset in force (SET_GCODE_OFFSET / tool offsets)."""
        gcode_move = self.printer.lookup_object('gcode_move', None)
        if gcode_move is None:
            return [0., 0.]
        origin = gcode_move.get_status(
            self.reactor.monotonic()).get('homing_origin')
        try:
            return [float(origin[0]), float(origin[1])]
        except (TypeError, ValueError, IndexError):
            return [0., 0.]

######################################################################
# Finding the nozzle: detections, their cache, the frozen-picture check
######################################################################

class NozzleFinder:
    """Detections through the helper, and centring the nozzle with them.

    ``model`` (a CameraModel or None) maps pixels to millimetres.
    """
    def __init__(self, printer, opts, client, motion, tools, model=None):
        self.reactor = printer.get_reactor()
        self.opts = opts
        self.client = client
        self.motion = motion
        self.tools = tools
        self.model = model
        self.last_detection = None
        self.last_center_moves = 0
        # Pixels where calibration saw a round thing stay put while the
        # nozzle moved (lens dirt, a reflection): never the nozzle.
        self.static_pixels = []
    def forget(self):
        """Drop the stored detection (camera or model changed)."""
        self.last_detection = None
        self.static_pixels = []
    def bore_hints(self, gcmd, scale=True):
        """What the helper may know of the bore: its diameter and (unless
        calibrating, which measures it anew) the scale."""
        default = (self.opts.nozzle_diameter or self.tools.nozzle_diameter()
                   or DEFAULT_NOZZLE_DIAMETER)
        hints = {'nozzle_diameter': gcmd.get_float(
            'NOZZLE_DIAMETER', default, minval=0.1,
            maxval=2.)}
        if scale and self.model is not None:
            hints['mm_per_px'] = self.model.mm_per_px()
            if self.model.frame_size:
                # The helper refuses frames of another size: the scale
                # would be wrong by the ratio.
                hints['calibrated_size'] = list(self.model.frame_size)
        return hints
    def detect(self, gcmd, frames=None, after_move=True, reference=None,
               hints=None, scale=True):
        """Detect the nozzle in fresh frames; returns the result dict.

        ``after_move`` asks for frames captured settle_time after the last
        move ended (the helper's freshness rule decides which those are);
        only such a detection may become an origin or an offset. Without
        ``scale`` the camera model's scale is not used (calibration).
        """
        opts = self.opts
        frames = frames or opts.detection_frames
        params = {'frames': frames}
        params.update(self.bore_hints(gcmd, scale))
        # The caller's own exclusions (calibration) replace the remembered.
        remembered = bool(self.static_pixels) and 'exclude' not in (hints or {})
        if remembered:
            params['exclude'] = [list(p) for p in self.static_pixels]
        params.update(hints or {})
        # A G1 just before this command may still be queued or running.
        self.motion.toolhead.wait_moves()
        if after_move:
            params['settle'] = opts.settle_time
            if not opts.helper_command:
                # A local helper shares CLOCK_MONOTONIC with Klippy.
                params['moved_at'] = time.monotonic()
            if reference is not None:
                # The picture before the move: the helper measures the
                # camera's latency from the first frame showing the move.
                params['reference'] = list(reference['uv'])
        timeout = opts.camera_timeout + opts.settle_time + 0.4 * frames + 1.
        params['timeout'] = min(60., timeout)
        pos = self.motion.position()
        tool = self.tools.current(strict=False)
        try:
            result = self.client.call(gcmd, 'detect', params, timeout)
        except gcmd.error as e:
            if not remembered or \
                    getattr(e, 'helper_code', None) != 'nozzle_not_found':
                raise
            # The nozzle may now sit where the dirt was seen: look again.
            del params['exclude']
            result = self.client.call(gcmd, 'detect', params, timeout)
        try:
            det = {'uv': [float(v) for v in result['center'][:2]],
                   'radius': float(result.get('radius', 0.)),
                   'score': float(result.get('score', 0.)),
                   'frames': int(result.get('frames_used', frames)),
                   # >1: each of those is a sum of dim frames
                   'summed': int(result.get('frames_summed', 1)),
                   'spread': float(result.get('spread', 0.)),
                   'frame_size': [int(v) for v in result['frame_size'][:2]],
                   'rings': [float(r) for r in result.get('rings', [])],
                   'rms': float(result.get('rms', 0.)),
                   'edge_width': float(result.get('edge_width') or 0.)}
        except (KeyError, TypeError, ValueError, IndexError) as e:
            # A helper from another kTAMV version, or a helper bug: say so
            # rather than shut the printer down.
            raise gcmd.error("kTAMV: the vision helper sent a detection "
                             "this ktamv.py cannot read (%s: %s); update both"
                             " from the same kTAMV checkout."
                             % (type(e).__name__, e))
        det.update({'position': [pos[0], pos[1]], 'tool': tool,
                    'digest': result.get('frame_digest'),
                    'settled': bool(after_move),
                    'camera': opts.camera_url,
                    'time': self.reactor.monotonic()})
        self.last_detection = det
        return det
    def fresh_detection(self, gcmd):
        """A settled detection made here with this tool and camera in the
        last DETECTION_MAX_AGE seconds, or a new one."""
        det = self.last_detection
        pos = self.motion.position()
        if (det is not None and det.get('settled')
            and det.get('camera') == self.opts.camera_url
            and (self.reactor.monotonic() - det.get('time', -1e9)
                 <= DETECTION_MAX_AGE)
            and det['tool'] == self.tools.current(strict=False)
            and abs(det['position'][0] - pos[0]) < 1e-9
            and abs(det['position'][1] - pos[1]) < 1e-9):
            return det
        return self.detect(gcmd)
    def check_picture_moved(self, gcmd, before, after):
        """Refuse a detection whose picture did not follow the toolhead."""
        dx = after['position'][0] - before['position'][0]
        dy = after['position'][1] - before['position'][1]
        dist = math.hypot(dx, dy)
        if dist < 1e-6:
            return
        if self.model is not None:
            expected = math.hypot(*self.model.mm_to_px(dx, dy))
        else:
            # Uncalibrated: the least shift any usable camera shows.
            expected = dist / MAX_MM_PER_PX
        seen = math.hypot(after['uv'][0] - before['uv'][0],
                          after['uv'][1] - before['uv'][1])
        same = before.get('digest') and before['digest'] == after['digest']
        still = (expected >= 2. * STILL_PX
                 and seen < max(STILL_PX, FROZEN_FRACTION * expected))
        if same or still:
            raise gcmd.error(
                "kTAMV: the camera picture did not change after a %.2f mm "
                "move (%s): is the stream frozen? Restart the camera service"
                " (e.g. sudo systemctl restart crowsnest) and check the "
                "stream in a browser." % (dist, "the same frame again" if same
                                          else "the nozzle moved %.2f px of "
                                          "%.1f expected; or the circle seen "
                                          "is dirt on the lens, which stays "
                                          "put" % (seen, expected)))
    def predicted(self, before):
        """``[u, v, reach]``: where the nozzle seen in ``before`` must
        appear now that the toolhead moved, by the camera model."""
        pos = self.motion.position()
        du, dv = self.model.mm_to_px(pos[0] - before['position'][0],
                                     pos[1] - before['position'][1])
        # Moves land on whole steps read back from Klipper and the model
        # maps them to a fraction of a percent, so the nozzle shows up
        # within a pixel or two of this; the reach also allows a scale
        # change after calibration (PREDICTION_SCALE of the move, e.g. a
        # refocus) and half the bore (its centre's wander at a first look).
        reach = max(PREDICTION_PX, PREDICTION_SCALE * math.hypot(du, dv),
                    0.5 * before.get('radius', 0.))
        return [before['uv'][0] + du, before['uv'][1] + dv, reach]
    def check_not_frozen(self, gcmd, before, error):
        """The nozzle was not where a move should have put it: if the
        picture simply did not change (the bore seen where it was, or the
        same frame), say that, not that the camera model is off."""
        things = round_things(error)
        if not things:
            return
        uv = min(things, key=lambda t: math.hypot(
            t[0][0] - before['uv'][0], t[0][1] - before['uv'][1]))[0]
        pos = self.motion.position()
        details = getattr(error, 'helper_details', None) or {}
        self.check_picture_moved(gcmd, before, {
            'uv': list(uv), 'position': [pos[0], pos[1]],
            'digest': details.get('frame_digest')})
    def pixel_error(self, det):
        cu, cv = image_center(det['frame_size'])
        return cu - det['uv'][0], cv - det['uv'][1]
    def corrected_position(self, gcmd):
        """Toolhead XY that puts the nozzle exactly on the image centre."""
        pos = self.motion.position()
        if self.model is None:
            return (pos[0], pos[1]), False
        det = self.fresh_detection(gcmd)
        du, dv = self.pixel_error(det)
        dx, dy = self.model.px_to_mm(du, dv)
        return (pos[0] + dx, pos[1] + dy), True
    def require_model(self, gcmd):
        if self.model is None:
            raise gcmd.error("kTAMV: the camera is not calibrated; put a "
                             "nozzle over the camera and run "
                             "KTAMV_CALIB_CAMERA first.")
    def first_look(self, gcmd):
        """The nozzle before centring; several bores in view are told
        apart by a small move (:meth:`probe`)."""
        try:
            return self.detect(gcmd)
        except gcmd.error as e:
            things = round_things(e)
            if getattr(e, 'helper_code', None) != 'nozzle_ambiguous' or \
                    self.model is None or len(things) < 2:
                raise
            return self.probe(gcmd, things)
    def probe(self, gcmd, things):
        """Move so the picture shifts by more than any of ``things`` is
        wide; the nozzle is the one that appears where the camera model
        puts it, lens dirt stays. Returns its detection or raises."""
        shift = max(PROBE_PX, 2. * max(r for _, r in things))
        pos = self.motion.position()
        mm = shift * self.model.mm_per_px()
        self.motion.move_to(pos[0] + mm, pos[1], "centring probe move")
        moved = []
        for uv, r in things:
            # No bore term in the reach: it must stay below the shift.
            near = self.predicted({'uv': uv, 'position': pos})
            try:
                moved.append(self.detect(gcmd, hints={'near': near}))
            except gcmd.error as e:
                if getattr(e, 'helper_code', None) not in NO_NOZZLE_CODES:
                    raise
        if len(moved) != 1:
            raise gcmd.error(
                "kTAMV: %d round things look like the bore (%s) and %d of "
                "them moved with a %.3f mm probe move as the camera model "
                "says the nozzle must, so kTAMV cannot tell which is the "
                "nozzle: clean the lens and the nozzle, or check the camera "
                "calibration; nothing was measured." % (
                    len(things), _where(things), len(moved), mm))
        gcmd.respond_info("kTAMV: %d round things in view; the one that "
                          "moved with a probe move is the nozzle." % (
                              len(things),))
        return moved[0]
    def center(self, gcmd, tolerance, max_moves):
        """Move until the nozzle is within ``tolerance`` px of the centre."""
        det = self.first_look(gcmd)
        moves = 0
        self.last_center_moves = 0
        while 1:
            du, dv = self.pixel_error(det)
            error_px = math.hypot(du, dv)
            dx, dy = self.model.px_to_mm(du, dv)
            if error_px <= tolerance:
                why = "within %.2f px" % (tolerance,)
                break
            pos = self.motion.position()
            if self.motion.cannot_improve(pos[0] + dx, pos[1] + dy):
                why = ("the nearest whole motor step is where the toolhead "
                       "is; the image corrects the remaining %.4f mm"
                       % (math.hypot(dx, dy),))
                break
            if moves >= max_moves:
                raise gcmd.error(
                    "kTAMV: the nozzle did not centre in %d moves: it is "
                    "still %.2f px (%.4f mm) from the image centre. Check the"
                    " camera calibration (KTAMV_CALIB_CAMERA) and that the "
                    "camera is firmly mounted." % (moves, error_px,
                                                   math.hypot(dx, dy)))
            self.motion.move_to(pos[0] + dx, pos[1] + dy, "centring move")
            moves += 1
            self.last_center_moves = moves
            before = det
            # A move the picture shows clearly measures the camera latency
            # (once per session); a tiny one would only wait for it.
            reference = (before if error_px >= 2. * LATENCY_SHIFT_PX
                         else None)
            try:
                det = self.detect(gcmd, reference=reference,
                                  hints={'near': self.predicted(before)})
            except gcmd.error as e:
                code = getattr(e, 'helper_code', None)
                if code not in NO_NOZZLE_CODES:
                    raise
                what = "lost the nozzle"
                if code == 'nozzle_not_where_expected':
                    self.check_not_frozen(gcmd, before, e)
                    what = "the camera model is off"
                raise gcmd.error("kTAMV: %s after centring move %d. %s"
                                 % (what, moves, e))
            self.check_picture_moved(gcmd, before, det)
        pos = self.motion.position()
        gcmd.respond_info(
            "kTAMV: nozzle centred after %d move(s) at X%.4f Y%.4f, %.3f px "
            "from the image centre (%s).%s" % (moves, pos[0], pos[1], error_px,
                                               why, soft_bore_note(det)))
        return det

def summed_note(det):
    """', each a sum of N dim frames' when the helper summed a dim
    camera's frames into each look, else ''."""
    summed = det.get('summed', 1)
    return ", each a sum of %d dim frames" % summed if summed > 1 else ""

def soft_bore_note(det):
    """A sentence for a bore small and soft enough to be measured off its
    centre (see SOFT_BORE_BLUR), else ''."""
    radius = det.get('radius') or 0.
    width = det.get('edge_width') or 0.
    if radius <= 0. or width / EDGE_WIDTH_PER_SIGMA < SOFT_BORE_BLUR * radius:
        return ""
    return (" The bore is small and soft in this camera (radius %.1f px, "
            "edge %.1f px wide): lit from one side, such a bore is measured "
            "up to a few tenths of a pixel towards its darker side. Focus on "
            "the tip (Z), light it evenly, or bring the camera closer so "
            "the radius is %d px or more." % (radius, width, SHARP_BORE_PX))

######################################################################
# Camera calibration: a circle of points, then the helper's fit
######################################################################

def rigid_choice(before, after, min_shift=RIGID_MIN_SHIFT_PX):
    """Which round things of one picture moved with the toolhead.

    ``before`` and ``after`` list ``((u, v), radius)`` of the round things
    seen before and after one move. One within RIGID_SAME_PX of a thing
    seen after stayed put (lens dirt, a reflection, the camera housing).
    One that did not stay and has a counterpart of its radius (within
    RIGID_RADIUS) at least ``min_shift`` px away, which is not a thing that
    stayed either, moved. Returns (indices into ``before`` that moved,
    indices that stayed).
    """
    def apart(a, b):
        return math.hypot(a[0][0] - b[0][0], a[0][1] - b[0][1])
    stayed = [i for i, b in enumerate(before)
              if any(apart(b, a) <= RIGID_SAME_PX for a in after)]
    new = [a for a in after
           if not any(apart(b, a) <= RIGID_SAME_PX for b in before)]
    moved = [i for i, b in enumerate(before) if i not in stayed and any(
        abs(a[1] - b[1]) <= RIGID_RADIUS * b[1] and apart(a, b) >= min_shift
        for a in new)]
    return moved, stayed

def round_things(error):
    """``((u, v), radius)`` of the bores a refused detection saw."""
    details = getattr(error, 'helper_details', None) or {}
    try:
        return [((float(c['center'][0]), float(c['center'][1])),
                 float(c['radius'])) for c in details.get('candidates', [])]
    except (KeyError, TypeError, ValueError, IndexError):
        return []

def _where(things):
    return ", ".join("u=%.0f v=%.0f r=%.0f px" % (uv[0], uv[1], r)
                     for uv, r in things)

def most_px_per_mm(det, nozzle_diameter):
    """The most pixels per mm the bore ``det`` allows: its radius plus its
    edge width (defocus shrinks a bore by about that) over the nominal
    bore radius; a chamfer only makes the bore look bigger, so fewer."""
    return (det['radius'] + det.get('edge_width', 0.)) / (.5 * nozzle_diameter)

def fitted_calibration_radius(radius, det, nozzle_diameter):
    """The calibration circle (mm) that keeps the bore ``det`` in view:
    ``radius``, or less where the bore's size says the camera sees more
    pixels per mm (:func:`most_px_per_mm`) than the frame has room for
    (a zoomed camera)."""
    (u, v), (w, h) = det['uv'], det['frame_size']
    room = max(min(u, w - u, v, h - v) - CALIB_ROOM_RADII * det['radius'],
               CALIB_MIN_ROOM * min(w, h))
    px_per_mm = most_px_per_mm(det, nozzle_diameter)
    if px_per_mm <= 0. or radius * px_per_mm <= room:
        return radius
    return max(CALIB_MIN_RADIUS, math.floor(room / px_per_mm * 1000.) / 1000.)

class CameraCalibration:
    def __init__(self, printer, opts, client, motion, finder, progress=None):
        self.progress = progress
        self.printer = printer
        self.opts = opts
        self.client = client
        self.motion = motion
        self.finder = finder
        self.statics = []   # pixels of round things that stayed put
        self.frame_size = None  # of the frames the points were seen in
    def plan(self, radius, count):
        """The start and ``count`` points around it; refused if any is out."""
        start = self.motion.begin()
        targets = [start] + [
            (start[0] + radius * math.cos(2. * math.pi * i / count),
             start[1] + radius * math.sin(2. * math.pi * i / count))
            for i in range(count)]
        # Refuse the whole plan before the first move if any point is out.
        b = self.motion.backlash
        self.motion.check_targets(
            [p for t in targets for p in self.motion.waypoints(*t)]
            + [(t[0] - b, t[1] - b) for t in targets], "calibration move")
        return targets
    def measure(self, gcmd, targets, fit=False):
        """Visit the targets; returns (pairs, missed), back at the start.
        With ``fit`` the circle may shrink to what the start's bore allows."""
        start = targets[0]
        pairs, missed = [], []
        try:
            self._points(gcmd, list(targets), pairs, missed, fit)
        except Exception:
            if self.progress is not None:
                self.progress.done()
            # Leave the nozzle where the user put it, but report the
            # original problem, not a failure of the way back.
            try:
                self.motion.move_to(start[0], start[1], "return to start")
            except Exception:
                logging.exception("ktamv: cannot return to the start")
            raise
        if self.progress is not None:
            self.progress.done()
        self.motion.move_to(start[0], start[1], "return to start")
        return pairs, missed
    def _points(self, gcmd, targets, pairs, missed, fit):
        first = hints = ambiguous = None
        statics = self.statics = []
        self.frame_size = None
        for i, (x, y) in enumerate(targets):
            if self.progress is not None:
                self.progress.step(gcmd, i + 1, len(targets),
                                   "calibration point X%.3f Y%.3f" % (x, y))
            self.motion.move_to(x, y, "calibration move")
            if ambiguous is not None:
                # The start showed several bores: this move tells which.
                first, statics = self._rigid_start(gcmd, ambiguous)
                self.statics = statics
                hints = self._hints(first, statics)
                pairs.append({'xy': first['position'], 'uv': first['uv']})
                ambiguous = None
            try:
                det = self._detect_point(gcmd, first, hints, statics)
            except gcmd.error as e:
                if getattr(e, 'helper_code', None) not in NO_NOZZLE_CODES:
                    raise  # camera or helper trouble: stop, do not guess
                if i == 0:
                    ambiguous = self._ambiguous_start(gcmd, e)
                    continue
                missed.append(i)
                logging.info("ktamv: calibration point %d: %s", i, e)
                continue
            self._same_size(gcmd, det['frame_size'])
            if i > 0:
                # A point whose picture did not move is not a point.
                self.finder.check_picture_moved(gcmd, first, det)
            else:
                first = det
                hints = self._hints(first, statics)
                if fit:
                    self._fit_circle(gcmd, targets, det)
            pos = self.motion.position()
            pairs.append({'xy': [pos[0], pos[1]], 'uv': det['uv']})
    def _fit_circle(self, gcmd, targets, det):
        """Shrink the circle of ``targets`` (in place, about the start)
        to what keeps the start's bore ``det`` in view (a zoomed camera).
        The smaller plan lies inside the checked one."""
        (x0, y0), (x1, y1) = targets[0], targets[1]
        radius = math.hypot(x1 - x0, y1 - y0)
        diameter = self.finder.bore_hints(gcmd, scale=False)['nozzle_diameter']
        fitted = fitted_calibration_radius(radius, det, diameter)
        if fitted >= radius:
            return
        k = fitted / radius
        targets[1:] = [(x0 + k * (x - x0), y0 + k * (y - y0))
                       for x, y in targets[1:]]
        gcmd.respond_info(
            "kTAMV: the bore is %.0f px in radius, so a %.2f mm nozzle shows "
            "up to %.0f px per mm: a %.3f mm circle would take it out of "
            "view; the points lie on a %.3f mm circle instead (RADIUS= sets "
            "it)." % (det['radius'], diameter, most_px_per_mm(det, diameter),
                      radius, fitted))
    def _same_size(self, gcmd, size):
        # The model holds for one frame size only (it is saved with it).
        if self.frame_size is None:
            self.frame_size = list(size)
        elif list(size) != self.frame_size:
            raise gcmd.error(
                "kTAMV: the camera changed its frame size during calibration "
                "(%dx%d, then %dx%d); fix its resolution and calibrate again;"
                " nothing was changed." % tuple(self.frame_size + list(size)))
    def _hints(self, first, statics):
        # The nozzle keeps its size and leaves the start pixel with every
        # move; a feature that stays there or at another pixel known to
        # stay put (lens dirt, the housing) is not the nozzle.
        return {'expected_radius': first['radius'],
                'exclude': [list(first['uv'])] + [list(p) for p in statics]}
    def _ambiguous_start(self, gcmd, e):
        """The start's bores when they are several, else the start error."""
        things = round_things(e)
        if e.helper_code != 'nozzle_ambiguous' or len(things) < 2:
            raise gcmd.error("kTAMV: no nozzle at the start position, so "
                             "calibration cannot begin. %s" % (e,))
        gcmd.respond_info("kTAMV: %d round things at the start (%s); the "
                          "first calibration move tells which is the nozzle."
                          % (len(things), _where(things)))
        pos = self.motion.position()
        return {'position': [pos[0], pos[1]], 'things': things}
    def _rigid_start(self, gcmd, start):
        """The start's bore that moved with the first calibration move, and
        the pixels of those that stayed put; raises if not exactly one."""
        try:
            det = self.finder.detect(gcmd, scale=False)
            after = [(det['uv'], det['radius'])]
        except gcmd.error as e:
            if getattr(e, 'helper_code', None) not in NO_NOZZLE_CODES:
                raise
            after = round_things(e)
        pos = self.motion.position()
        dist = math.hypot(pos[0] - start['position'][0],
                          pos[1] - start['position'][1])
        before = start['things']
        moved, stayed = rigid_choice(before, after, max(
            RIGID_MIN_SHIFT_PX, dist / MAX_MM_PER_PX))
        if not moved:
            raise gcmd.error(
                "kTAMV: none of the %d round things at the start (%s) moved "
                "with the toolhead on the first calibration move: is the "
                "camera stream frozen? Check it in a browser, put the nozzle "
                "near the image centre and clean the lens; nothing was "
                "changed." % (len(before), _where(before)))
        if len(moved) > 1:
            raise gcmd.error(
                "kTAMV: %d round things of the same size moved with the "
                "toolhead on the first calibration move (%s), so kTAMV cannot"
                " tell which is the nozzle: only one nozzle may be in view "
                "(park the other tools); nothing was changed."
                % (len(moved), _where([before[i] for i in moved])))
        uv, radius = before[moved[0]]
        gcmd.respond_info(
            "kTAMV: the one at u=%.1f v=%.1f (r=%.1f px) moved with the "
            "toolhead: it is the nozzle.%s" % (uv[0], uv[1], radius, "".join(
                " One stayed put at u=%.1f v=%.1f (lens dirt, a reflection or"
                " the housing) and is ignored." % before[i][0]
                for i in stayed)))
        first = {'uv': list(uv), 'radius': radius, 'digest': None,
                 'position': start['position'], 'rigid': True}
        return first, [before[i][0] for i in stayed]
    def _detect_point(self, gcmd, first, hints, statics=()):
        """The bore at a calibration point, never the start's pixel; if
        nothing else is there, look once more with it allowed, so a frozen
        picture or a static feature is named as such (check_picture_moved)
        rather than passed off as "no nozzle". The camera latency is
        measured against the start's picture, by a detection that knows no
        static pixels: pointless when the start needed them (``rigid``)."""
        reference = None if first and first.get('rigid') else first
        try:
            return self.finder.detect(gcmd, reference=reference, hints=hints,
                                      scale=False)
        except gcmd.error as e:
            if hints is None or getattr(e, 'helper_code', None) \
                    != 'nozzle_not_found':
                raise
            retry = {'expected_radius': hints['expected_radius']}
            if statics:
                retry['exclude'] = [list(p) for p in statics]
            det = self.finder.detect(gcmd, reference=reference, hints=retry,
                                     scale=False)
            self.finder.check_picture_moved(gcmd, first, det)
            return det
    def fit(self, gcmd, pairs):
        """The helper's fit of the pairs, in use and staged for SAVE_CONFIG."""
        fit = self.client.call(gcmd, 'fit_camera_model', {'pairs': pairs})
        try:
            model = CameraModel(fit['matrix'], fit, self.frame_size)
        except (KeyError, TypeError, ValueError) as e:
            raise gcmd.error("kTAMV: the vision helper sent a camera model "
                             "this ktamv.py cannot read (%s: %s); nothing was"
                             " changed." % (type(e).__name__, e))
        if 0 in fit.get('rejected', []):
            # The fit is the rigidity check: every point moved as one.
            gcmd.respond_info(
                "kTAMV: the start point does not fit the others, so what was "
                "taken for the nozzle there did not move with it (lens dirt, "
                "a reflection); the model comes from the other points.")
        self.finder.model = model
        self.finder.forget()
        self.finder.static_pixels = list(self.statics)
        configfile = self.printer.lookup_object('configfile')
        configfile.set(self.opts.name, 'camera_matrix', model.config_value())
        if model.frame_size:
            configfile.set(self.opts.name, 'camera_frame_size',
                           "%d, %d" % tuple(model.frame_size))
        return model, fit

######################################################################
# Origin, offsets and their statistics
######################################################################

class OffsetBook:
    def __init__(self):
        self.origin = None
        self.offsets = {}
        self.samples = {}
        self.last_calculated_offset = [0., 0.]
        self.last_tool_gcode_offset = [0., 0.]
    def set_origin(self, tool, position, gcode_offset):
        # The reference tool's own G-code offset: other tools' offsets
        # are relative to it.
        self.origin = {'tool': tool, 'position': list(position),
                       'gcode_offset': list(gcode_offset)}
        self.offsets = {tool: [0., 0.]}
        self.samples = {}
    def record(self, tool, position):
        """The offset of ``tool`` centred at ``position``, remembered."""
        ox, oy = self.origin['position']
        offset = [position[0] - ox, position[1] - oy]
        self.last_calculated_offset = offset
        ref = self.origin.get('gcode_offset') or [0., 0.]
        self.last_tool_gcode_offset = [ref[0] + offset[0],
                                       ref[1] + offset[1]]
        self.offsets[tool] = list(offset)
        self.samples.setdefault(tool, []).append(tuple(offset))
        return offset
    def report(self, tool, offset, corrected):
        ref = self.origin.get('gcode_offset') or [0., 0.]
        gx, gy = self.last_tool_gcode_offset
        if abs(ref[0]) > 1e-9 or abs(ref[1]) > 1e-9:
            ref_text = (" = %s's own G-code offset X%+.4f Y%+.4f, active at "
                        "KTAMV_SET_ORIGIN, plus this offset" % (
                            self.origin['tool'], ref[0], ref[1]))
        else:
            ref_text = ""
        return (
            "kTAMV: offset of %s from the origin (%s): X%+.4f Y%+.4f mm%s.\n"
            "Tool G-code offset for %s: X=%.4f Y=%.4f%s (same sign: the "
            "toolhead must move by this much to put %s where %s was), e.g. "
            "SET_GCODE_OFFSET X=%.4f Y=%.4f while %s is active, or "
            "gcode_x_offset: %.4f and gcode_y_offset: %.4f in its [tool] "
            "section (klipper-toolchanger)."
            % (tool, self.origin['tool'], offset[0], offset[1],
               "" if corrected else " (raw positions: camera not calibrated)",
               tool, gx, gy, ref_text, tool, self.origin['tool'], gx, gy,
               tool, gx, gy))
    def statistics_text(self, tools):
        lines = ["kTAMV offset statistics (mm):"]
        for tool in tools:
            st = offset_statistics(self.samples.get(tool, []))
            if not st['count']:
                lines.append("%s: no samples" % (tool,))
                continue
            lines.append(
                "%s: n=%d mean X%+.4f Y%+.4f stdev X%.4f Y%.4f range X%.4f "
                "Y%.4f" % (tool, st['count'], st['mean'][0], st['mean'][1],
                           st['stdev'][0], st['stdev'][1], st['range'][0],
                           st['range'][1]))
        return "\n".join(lines)
    def get_status(self):
        return {
            'last_calculated_offset': list(self.last_calculated_offset),
            'last_tool_gcode_offset': list(self.last_tool_gcode_offset),
            'camera_center_coordinates': (list(self.origin['position'])
                                          if self.origin else None),
            'origin': dict(self.origin) if self.origin else None,
            'offsets': dict((k, list(v)) for k, v in self.offsets.items()),
            'repeat_statistics': dict(
                (tool, offset_statistics(samples))
                for tool, samples in self.samples.items()),
        }

######################################################################
# The [ktamv] extra: G-code commands wired to the parts above
######################################################################

######################################################################
# Progress of long commands, for screens (printer.ktamv.progress)
######################################################################

class Progress:
    """{step, of, what} of the long command running now, one line a step.

    The status dict is replaced, never changed in place, so get_status
    can hand it out as it is and API clients see each change.
    """
    IDLE = {'step': 0, 'of': 0, 'what': ''}
    def __init__(self):
        self.status = self.IDLE
    def step(self, gcmd, step, of, what):
        self.status = {'step': int(step), 'of': int(of), 'what': str(what)}
        gcmd.respond_info("kTAMV [%d/%d] %s" % (step, of, what))
    def done(self):
        self.status = self.IDLE
    def get_status(self):
        return self.status
    def command(self, gcmd):
        """KTAMV_PROGRESS STEP= OF= WHAT= (DONE=1 clears it)."""
        if gcmd.get_int('DONE', 0, minval=0, maxval=1):
            self.done()
            return
        of = gcmd.get_int('OF', minval=1, maxval=10000)
        step = gcmd.get_int('STEP', minval=0, maxval=of)
        self.step(gcmd, step, of, gcmd.get('WHAT', ''))

######################################################################
# Spiral search for a nozzle that is out of view
######################################################################

# Before calibration the field of view is unknown; 2 mm is a conservative
# guess of its short side (a 0.4 mm bore 96 px wide on a 480 px high
# image), so the search steps 1.4 mm, small enough for nearly any camera.
SEARCH_FOV_GUESS = 2.0
SEARCH_PITCH = 0.7

def search_pitch(model, frame_size):
    """(pitch X, pitch Y, how) of the spiral: 70% of the field of view.

    With a camera model, the field of view is the largest axis-aligned
    rectangle of the image's shape that the image shows in machine XY;
    without one (or without a frame size), a square of SEARCH_FOV_GUESS.
    Any rotation then keeps each spiral cell inside the image.
    """
    if model is None or not frame_size:
        p = SEARCH_PITCH * SEARCH_FOV_GUESS
        return p, p, ("%.2f mm: 70%% of a guessed %.1f mm field of view "
                      "(camera not calibrated)" % (p, SEARCH_FOV_GUESS))
    (a, b), (d, e) = model.matrix
    det = a * e - b * d
    # mm -> px
    ia, ib, ic, idd = e / det, -b / det, -d / det, a / det
    width, height = float(frame_size[0]), float(frame_size[1])
    rot = abs(model.rotation_deg()) % 180.
    wx, wy = (height, width) if 45. < rot < 135. else (width, height)
    t = min(width / (abs(ia) * wx + abs(ib) * wy),
            height / (abs(ic) * wx + abs(idd) * wy))
    px, py = SEARCH_PITCH * t * wx, SEARCH_PITCH * t * wy
    return px, py, ("%.2f x %.2f mm: 70%% of the %.2f x %.2f mm field of "
                    "view" % (px, py, t * wx, t * wy))

def spiral_cells(rings):
    """Grid cells (i, j) of a square spiral out to ``rings``, start excluded."""
    cells = []
    i = j = 0
    di, dj = 1, 0
    run = 1
    while 1:
        for _ in range(2):
            for _ in range(run):
                i, j = i + di, j + dj
                if max(abs(i), abs(j)) > rings:
                    return cells
                cells.append((i, j))
            di, dj = -dj, di
        run += 1

class NozzleSearch:
    """Square spiral search: step outward until the camera sees a nozzle.

    The positions are the cells of a square spiral around the start, whose
    pitch keeps neighbouring views overlapping, visited nearest first.

    Collaborators: ``motion`` (KtamvMotion: fence, checks, backlash-side
    moves), ``detect()`` (one detection here; raises a command error whose
    helper_code tells "no nozzle" from camera faults) and ``progress``.
    """
    def __init__(self, printer, motion, detect, progress):
        self.printer = printer
        self.motion = motion
        self.detect = detect
        self.progress = progress
        self.path = []
        self.toolhead_moves = 0
        self.motion_time = 0.
    def _reachable(self, start, point, reach):
        b = self.motion.backlash
        for px, py in (point, (point[0] - b, point[1] - b)):
            if math.hypot(px - start[0], py - start[1]) > reach + 1e-9:
                return False
        try:
            # Printer limits and max_travel, as every move checks them.
            self.motion.check_targets(
                [point, (point[0] - b, point[1] - b)], "search move")
        except self.printer.command_error:
            return False
        return True
    def plan(self, start, reach, pitch_x, pitch_y):
        rings = int(math.ceil(reach / min(pitch_x, pitch_y))) + 1
        points = []
        for i, j in spiral_cells(rings):
            point = (start[0] + i * pitch_x, start[1] + j * pitch_y)
            if self._reachable(start, point, reach):
                points.append((i * pitch_x, j * pitch_y, point))
        # Nearest first (ties counter-clockwise from +X): a nozzle just out
        # of view is found before the far cells are visited.
        points.sort(key=lambda p: (round(math.hypot(p[0], p[1]), 6),
                                   math.atan2(p[1], p[0]) % (2. * math.pi)))
        return [p[2] for p in points]
    def _move(self, x, y):
        pos = self.motion.position()
        toolhead = self.motion.toolhead
        accel = toolhead.get_status(
            self.printer.get_reactor().monotonic()).get('max_accel', 3000.)
        v = self.motion.speed
        for px, py in self.motion.waypoints(x, y):
            dist = math.hypot(px - pos[0], py - pos[1])
            # Trapezoid (or triangle) profile at move_speed and max_accel.
            if dist >= v * v / accel:
                self.motion_time += dist / v + v / accel
            elif dist > 0.:
                self.motion_time += 2. * math.sqrt(dist / accel)
            pos = (px, py)
            self.toolhead_moves += 1
        self.motion.move_to(x, y, "search move")
    def _look(self, gcmd):
        try:
            return self.detect()
        except gcmd.error as e:
            if getattr(e, 'helper_code', None) not in NO_NOZZLE_CODES:
                raise  # camera or helper fault: never search blind
            return None
    def run(self, gcmd, reach, pitch):
        """Search up to ``reach`` mm from here; returns the detection.

        On failure the toolhead is taken back to the start and the error
        says so; a camera fault stops the search at once.
        """
        reactor = self.printer.get_reactor()
        began = reactor.monotonic()
        start = tuple(self.motion.position()[:2])
        det = self._look(gcmd)
        if det is not None:
            return det, False
        pitch_x, pitch_y, how = pitch
        points = self.plan(start, reach, pitch_x, pitch_y)
        gcmd.respond_info(
            "kTAMV: no nozzle in view at X%.3f Y%.3f; searching a square "
            "spiral of %d positions up to %.2f mm away, pitch %s."
            % (start[0], start[1], len(points), reach, how))
        if not points:
            raise gcmd.error(
                "kTAMV: no nozzle in view, and no search position is within "
                "%.2f mm of X%.3f Y%.3f (the spiral steps %.2f x %.2f mm; "
                "max_travel and the printer's limits apply too). Nothing was"
                " moved; raise SEARCH." % (reach, start[0], start[1],
                                           pitch_x, pitch_y))
        try:
            for n, (x, y) in enumerate(points):
                self.progress.step(gcmd, n + 1, len(points),
                                   "search X%.3f Y%.3f" % (x, y))
                self._move(x, y)
                pos = self.motion.position()
                self.path.append((pos[0], pos[1]))
                det = self._look(gcmd)
                if det is not None:
                    break
        except Exception as e:
            self._back(start)
            if isinstance(e, self.printer.command_error):
                raise gcmd.error("%s The search stopped after %d position(s)"
                                 "; the toolhead is back at the start "
                                 "X%.3f Y%.3f." % (e, len(self.path),
                                                    start[0], start[1]))
            raise
        finally:
            self.progress.done()
        camera = reactor.monotonic() - began
        path = " -> ".join("X%.3f Y%.3f" % p for p in self.path)
        if det is None:
            self._back(start)
            raise gcmd.error(
                "kTAMV: no nozzle found within %.2f mm of X%.3f Y%.3f (%d "
                "positions searched: %s). The toolhead is back at the start."
                " Move the nozzle closer to the camera, or raise SEARCH "
                "(and max_travel)." % (reach, start[0], start[1],
                                       len(self.path), path))
        gcmd.respond_info(
            "kTAMV: nozzle found after %d search position(s), %d toolhead "
            "move(s), %.1f s (%.1f s camera, %.1f s motion at move_speed). "
            "Path: X%.3f Y%.3f -> %s" % (
                len(self.path), self.toolhead_moves, camera + self.motion_time,
                camera, self.motion_time, start[0], start[1], path))
        return det, True
    def _back(self, start):
        try:
            self.motion.move_to(start[0], start[1], "return to the start")
        except Exception:
            logging.exception("ktamv: cannot return to the search start")

def search_here(gcmd, reach, parts, scale=True):
    """SEARCH=<mm>: spiral out until a nozzle is in view; ``parts`` is the
    Ktamv object (printer, motion, finder, client, progress, opts). Without
    ``scale`` (before a calibration) the camera model is not used.

    Returns (moved, summary for printer.ktamv.last_search)."""
    printer, motion, finder = parts.printer, parts.motion, parts.finder
    client, progress, opts = parts.client, parts.progress, parts.opts
    reach = min(reach, motion.max_travel)
    model = finder.model if scale else None
    frame_size = None
    if model is not None:
        frame_size = (finder.last_detection or {}).get('frame_size') or \
            client.call(gcmd, 'grab', {'timeout': opts.camera_timeout},
                        opts.camera_timeout).get('frame_size')
    # Misses are expected while searching: no advice on them (the helper
    # would search each empty frame again for a smaller bore).
    search = NozzleSearch(printer, motion,
                          lambda: finder.detect(gcmd, hints={'advice': False},
                                                scale=scale),
                          progress)
    det, moved = search.run(gcmd, reach, search_pitch(model, frame_size))
    return moved, {'positions': len(search.path),
                   'toolhead_moves': search.toolhead_moves,
                   'motion_time': search.motion_time,
                   'path': [list(p) for p in search.path]}

######################################################################
# Verification of applied offsets
######################################################################

class OffsetVerifier:
    """Re-centres a tool with its G-code offset active; keeps residuals.

    The origin in G-code coordinates is the origin's toolhead position
    minus the reference tool's G-code offset then; with a tool's offset g
    in force, G-code would put that tool's nozzle at origin + g. The
    residual is where the re-centred nozzle really is minus that, in mm.
    """
    def __init__(self, tolerance):
        self.tolerance = tolerance
        self.status = {'tolerance': tolerance, 'tools': {}, 'flagged': []}
    def reset(self):
        self.status = {'tolerance': self.tolerance, 'tools': {},
                       'flagged': []}
    def target(self, origin, gcode_offset):
        ox, oy = origin['position']
        ref = origin.get('gcode_offset') or [0., 0.]
        return (ox - ref[0] + gcode_offset[0], oy - ref[1] + gcode_offset[1])
    def verify(self, gcmd, tool, origin, gcode_offset, motion, center,
               corrected, tolerance):
        tx, ty = self.target(origin, gcode_offset)
        motion.check_homed()
        # An explicit move to where the offsets say the nozzle is; the
        # centring after it is bound by max_travel from there.
        motion.fence_start = None
        motion.move_to(tx, ty, "move to the origin with %s's offset" % tool)
        motion.begin()
        center()
        (x, y), _ = corrected()
        rx, ry = x - tx, y - ty
        dist = math.hypot(rx, ry)
        ok = dist <= tolerance
        tools = dict(self.status['tools'])
        tools[tool] = {'residual': [rx, ry], 'distance': dist, 'ok': ok,
                       'gcode_offset': list(gcode_offset),
                       'tolerance': tolerance}
        self.status = {'tolerance': self.tolerance, 'tools': tools,
                       'flagged': sorted(t for t, r in tools.items()
                                         if not r['ok'])}
        gcmd.respond_info(
            "kTAMV: verify %s with G-code offset X%.4f Y%.4f: residual "
            "X%+.4f Y%+.4f mm, %.4f mm from where the offset puts it: %s"
            % (tool, gcode_offset[0], gcode_offset[1], rx, ry, dist,
               "OK (within %.4f mm)" % tolerance if ok else
               "FLAGGED, more than %.4f mm: this offset is wrong or not "
               "applied" % tolerance))
        return tools[tool]
    def get_status(self):
        return self.status
    def command(self, gcmd, parts):
        """KTAMV_VERIFY_OFFSET [APPLY=1] [TOLERANCE=]; ``parts`` is the
        Ktamv object (printer, book, tools, finder, motion, opts)."""
        printer, book, tools = parts.printer, parts.book, parts.tools
        finder, motion, opts = parts.finder, parts.motion, parts.opts
        tolerance = gcmd.get_float('TOLERANCE', self.tolerance, above=0.,
                                   maxval=1.)
        apply_offset = gcmd.get_int('APPLY', 0, minval=0, maxval=1)
        if book.origin is None:
            raise gcmd.error("kTAMV: no origin yet; centre the reference "
                             "tool and run KTAMV_SET_ORIGIN first.")
        finder.require_model(gcmd)
        tool = tools.current()
        if apply_offset:
            if tool not in book.offsets:
                raise gcmd.error("kTAMV: APPLY=1 but no offset of %s was "
                                 "measured since KTAMV_SET_ORIGIN." % (tool,))
            ref = book.origin.get('gcode_offset') or [0., 0.]
            gx, gy = [ref[i] + book.offsets[tool][i] for i in (0, 1)]
            printer.lookup_object('gcode').run_script_from_command(
                "SET_GCODE_OFFSET X=%.4f Y=%.4f" % (gx, gy))
        self.verify(
            gcmd, tool, book.origin, tools.gcode_offset(), motion,
            lambda: finder.center(gcmd, opts.center_tolerance,
                                  opts.center_max_moves),
            lambda: finder.corrected_position(gcmd), tolerance)

######################################################################
# The [ktamv] extra
######################################################################

class Ktamv:
    def __init__(self, config):
        self.printer = config.get_printer()
        self.reactor = self.printer.get_reactor()
        self.opts = opts = KtamvOptions(config)
        self.name = opts.name
        self.motion = KtamvMotion(self.printer, opts.move_speed / 60.,
                                  opts.backlash, opts.max_travel)
        self.helper = HelperProcess(
            self.reactor, opts.helper_argv(), cwd=opts.repo_dir(),
            env=opts.helper_env(), startup_timeout=opts.helper_timeout)
        self.tools = ToolIdentity(self.printer, opts.tool_status)
        self.client = HelperClient(self.printer, opts, self.helper,
                                   self.motion, self.tools)
        self.finder = NozzleFinder(self.printer, opts, self.client,
                                   self.motion, self.tools,
                                   opts.camera_matrix)
        self.progress = Progress()
        self.calibration = CameraCalibration(self.printer, opts, self.client,
                                             self.motion, self.finder,
                                             self.progress)
        self.book = OffsetBook()
        self.verifier = OffsetVerifier(opts.verify_tolerance)
        self.last_search, self.last_nozzle_center_successful = None, False
        self.printer.register_event_handler("klippy:connect",
                                            self._handle_connect)
        self.printer.register_event_handler("klippy:disconnect",
                                            self._handle_disconnect)
        # Registered as they are, so an unexpected exception (a bug) shuts
        # the printer down as Klipper does for its own commands; every
        # foreseeable problem is a command error with a sentence.
        gcode = self.printer.lookup_object('gcode')
        gcode.register_command('KTAMV_CALIB_CAMERA',
                               self.cmd_KTAMV_CALIB_CAMERA,
                               desc=self.cmd_KTAMV_CALIB_CAMERA_help)
        gcode.register_command('KTAMV_FIND_NOZZLE_CENTER',
                               self.cmd_KTAMV_FIND_NOZZLE_CENTER,
                               desc=self.cmd_KTAMV_FIND_NOZZLE_CENTER_help)
        gcode.register_command('KTAMV_SET_ORIGIN', self.cmd_KTAMV_SET_ORIGIN,
                               desc=self.cmd_KTAMV_SET_ORIGIN_help)
        gcode.register_command('KTAMV_GET_OFFSET', self.cmd_KTAMV_GET_OFFSET,
                               desc=self.cmd_KTAMV_GET_OFFSET_help)
        gcode.register_command('KTAMV_MOVE_TO_ORIGIN',
                               self.cmd_KTAMV_MOVE_TO_ORIGIN,
                               desc=self.cmd_KTAMV_MOVE_TO_ORIGIN_help)
        gcode.register_command('KTAMV_SIMPLE_NOZZLE_POSITION',
                               self.cmd_KTAMV_SIMPLE_NOZZLE_POSITION,
                               desc=self.cmd_KTAMV_SIMPLE_NOZZLE_POSITION_help)
        gcode.register_command('KTAMV_TEST', self.cmd_KTAMV_TEST,
                               desc=self.cmd_KTAMV_TEST_help)
        gcode.register_command('KTAMV_START_PREVIEW',
                               self.cmd_KTAMV_START_PREVIEW,
                               desc=self.cmd_KTAMV_START_PREVIEW_help)
        gcode.register_command('KTAMV_STOP_PREVIEW',
                               self.cmd_KTAMV_STOP_PREVIEW,
                               desc=self.cmd_KTAMV_STOP_PREVIEW_help)
        gcode.register_command('KTAMV_SEND_SERVER_CFG',
                               self.cmd_KTAMV_SEND_SERVER_CFG,
                               desc=self.cmd_KTAMV_SEND_SERVER_CFG_help)
        gcode.register_command('KTAMV_OFFSET_STATISTICS',
                               self.cmd_KTAMV_OFFSET_STATISTICS,
                               desc=self.cmd_KTAMV_OFFSET_STATISTICS_help)
        gcode.register_command('KTAMV_VERIFY_OFFSET',
                               self.cmd_KTAMV_VERIFY_OFFSET,
                               desc=self.cmd_KTAMV_VERIFY_OFFSET_help)
        gcode.register_command('KTAMV_PROGRESS', self.cmd_KTAMV_PROGRESS,
                               desc=self.cmd_KTAMV_PROGRESS_help)
    # Events
    def _handle_connect(self):
        self.motion.handle_connect()
        try:
            self.helper.start()
        except HelperFailure as e:
            # Klipper keeps running; commands report the problem.
            logging.warning("ktamv: %s", e.message)
    def _handle_disconnect(self):
        self.helper.stop()
    # Commands
    cmd_KTAMV_CALIB_CAMERA_help = ("Calibrate the nozzle camera: move the "
                                   "nozzle around this point and fit the "
                                   "pixel to mm model")
    def cmd_KTAMV_CALIB_CAMERA(self, gcmd):
        fit = gcmd.get('RADIUS', None) is None  # may shrink (zoomed camera)
        radius = gcmd.get_float('RADIUS', self.opts.calibration_radius,
                                above=0., maxval=10.)
        count = gcmd.get_int('POINTS', self.opts.calibration_points,
                             minval=4, maxval=50)
        search = gcmd.get_float('SEARCH', 0., minval=0., maxval=1000.)
        fence = self.motion.begin()
        searched = search > 0. and self._search(gcmd, search, scale=False)
        targets = self.calibration.plan(radius, count)
        self.motion.fence_start = fence  # SEARCH: still bound to the start
        start = targets[0]
        gcmd.respond_info("kTAMV: calibrating the camera with %d points on "
                          "a %.3f mm circle around X%.3f Y%.3f."
                          % (count, radius, start[0], start[1]))
        pairs, missed = self.calibration.measure(gcmd, targets, fit)
        if len(pairs) < 3:
            raise gcmd.error("kTAMV: the nozzle was found at only %d of %d "
                             "calibration points; nothing was changed. Check "
                             "focus and lighting (KTAMV_SIMPLE_NOZZLE_POSITION"
                             ") or use a smaller RADIUS." % (len(pairs),
                                                            count + 1))
        model, fit = self.calibration.fit(gcmd, pairs)
        used = fit.get('used', list(range(len(pairs))))
        rejected = fit.get('rejected', [])
        gcmd.respond_info(
            "kTAMV: camera calibrated: %.5f mm/px (%.1f px/mm), rotation "
            "%.2f deg, %s, RMS residual %.4f mm; %d points used, %d rejected"
            " as outliers, %d without a nozzle.\nThe model is in use now; "
            "run SAVE_CONFIG to keep it after a restart."
            % (model.mm_per_px(), 1. / model.mm_per_px(),
               model.rotation_deg(),
               "mirrored" if model.mirrored() else "not mirrored",
               float(fit.get('rms_mm', 0.)), len(used), len(rejected),
               len(missed)))
        if searched:
            # Found by the search, maybe far off-centre: centre it now.
            self.finder.center(gcmd, self.opts.center_tolerance,
                               self.opts.center_max_moves)
    cmd_KTAMV_FIND_NOZZLE_CENTER_help = ("Move the nozzle to the centre of "
                                         "the camera image")
    def cmd_KTAMV_FIND_NOZZLE_CENTER(self, gcmd):
        self.finder.require_model(gcmd)
        tolerance = gcmd.get_float('TOLERANCE', self.opts.center_tolerance,
                                   above=0., maxval=50.)
        max_moves = gcmd.get_int('MAX_MOVES', self.opts.center_max_moves,
                                 minval=1, maxval=50)
        search = gcmd.get_float('SEARCH', 0., minval=0., maxval=1000.)
        self.last_nozzle_center_successful = False
        self.motion.begin()
        if search > 0.:
            self._search(gcmd, search)
        self.finder.center(gcmd, tolerance, max_moves)
        self.last_nozzle_center_successful = True
    def _search(self, gcmd, reach, scale=True):
        moved, self.last_search = search_here(gcmd, reach, self, scale)
        return moved
    cmd_KTAMV_SET_ORIGIN_help = ("Remember the centred nozzle's position as "
                                 "the origin that offsets are measured from")
    def cmd_KTAMV_SET_ORIGIN(self, gcmd):
        tool = self.tools.current()
        (x, y), corrected = self.finder.corrected_position(gcmd)
        self.book.set_origin(tool, (x, y), self.tools.gcode_offset())
        self.verifier.reset()
        note = ("corrected from the image" if corrected else
                "raw toolhead position: the camera is not calibrated")
        gcmd.respond_info("kTAMV: origin set to X%.4f Y%.4f for %s (%s)."
                          % (x, y, tool, note))
    cmd_KTAMV_GET_OFFSET_help = ("Report the current tool's offset from the "
                                 "origin (REPEAT=n re-centres n times and "
                                 "reports statistics)")
    def cmd_KTAMV_GET_OFFSET(self, gcmd):
        if self.book.origin is None:
            raise gcmd.error("kTAMV: no origin yet; centre the reference "
                             "tool and run KTAMV_SET_ORIGIN first.")
        repeat = gcmd.get_int('REPEAT', 1, minval=1, maxval=100)
        tool = self.tools.current()
        if repeat == 1:
            position, corrected = self.finder.corrected_position(gcmd)
            offset = self.book.record(tool, position)
            gcmd.respond_info(self.book.report(tool, offset, corrected))
            return
        self.finder.require_model(gcmd)
        self.motion.begin()
        start = self.motion.position()
        r = self.opts.calibration_radius
        for i in range(repeat):
            # Step away and come back so each sample includes a fresh
            # approach and detection (TAMV's repeatability test).
            angle = 2. * math.pi * i / repeat
            self.motion.move_to(start[0] + r * math.cos(angle),
                                start[1] + r * math.sin(angle), "repeat move")
            self.motion.move_to(start[0], start[1], "repeat move")
            self.finder.center(gcmd, self.opts.center_tolerance,
                               self.opts.center_max_moves)
            position, _ = self.finder.corrected_position(gcmd)
            offset = self.book.record(tool, position)
            gcmd.respond_info("kTAMV: %s sample %d/%d: X%+.4f Y%+.4f"
                              % (tool, i + 1, repeat, offset[0], offset[1]))
        gcmd.respond_info(self.book.statistics_text([tool]))
    cmd_KTAMV_OFFSET_STATISTICS_help = ("Report mean, standard deviation and"
                                        " range of the offsets measured per "
                                        "tool (RESET=1 clears them)")
    def cmd_KTAMV_OFFSET_STATISTICS(self, gcmd):
        reset = gcmd.get_int('RESET', 0, minval=0, maxval=1)
        if not self.book.samples:
            gcmd.respond_info("kTAMV: no offsets measured since the origin "
                              "was set.")
        else:
            gcmd.respond_info(self.book.statistics_text(
                sorted(self.book.samples)))
        if reset:
            self.book.samples = {}
    cmd_KTAMV_MOVE_TO_ORIGIN_help = ("Move to the origin (or camera_position"
                                     " if no origin is set)")
    def cmd_KTAMV_MOVE_TO_ORIGIN(self, gcmd):
        if self.book.origin is not None:
            x, y = self.book.origin['position']
            what = "origin"
        elif self.opts.camera_position is not None:
            x, y = self.opts.camera_position
            what = "camera_position"
        else:
            raise gcmd.error("kTAMV: no origin set and no camera_position in "
                             "[ktamv]; nothing to move to.")
        self.motion.check_homed()
        # An explicit move to a known point: not bound by max_travel.
        self.motion.fence_start = None
        self.motion.move_to(x, y, "move to %s" % (what,))
        gcmd.respond_info("kTAMV: moved to the %s X%.4f Y%.4f." % (what, x, y))
    cmd_KTAMV_SIMPLE_NOZZLE_POSITION_help = ("Detect the nozzle in the camera"
                                             " image without moving")
    def cmd_KTAMV_SIMPLE_NOZZLE_POSITION(self, gcmd):
        frames = gcmd.get_int('FRAMES', self.opts.detection_frames, minval=1,
                              maxval=50)
        det = self.finder.detect(gcmd, frames, after_move=False)
        du, dv = self.finder.pixel_error(det)
        msg = ("kTAMV: nozzle found at u=%.2f v=%.2f px (radius %.1f px, "
               "score %.2f, %d frames%s), %.2f px from the image centre."
               % (det['uv'][0], det['uv'][1], det['radius'], det['score'],
                  det['frames'], summed_note(det), math.hypot(du, dv)))
        model = self.finder.model
        if model is not None:
            dx, dy = model.px_to_mm(du, dv)
            msg += " Centring needs a move of X%+.4f Y%+.4f mm." % (dx, dy)
        gcmd.respond_info(msg)
    cmd_KTAMV_TEST_help = ("Check the vision helper and the camera: versions "
                           "and one frame")
    def cmd_KTAMV_TEST(self, gcmd):
        # The user checks the helper: try it again even after a crash loop.
        self.helper.reset()
        self.client.self_test(gcmd)
    cmd_KTAMV_START_PREVIEW_help = "Start annotating the preview stream"
    def cmd_KTAMV_START_PREVIEW(self, gcmd):
        res = self.client.call(gcmd, 'preview', {'action': 'start'})
        self.client.preview_info = res
        if res.get('error') or not res.get('url'):
            raise gcmd.error("kTAMV: the preview is not available: %s"
                             % (res.get('error') or "set preview_port in "
                                "[ktamv] to serve one",))
        gcmd.respond_info("kTAMV: preview running at %s (stream %s)."
                          % (res.get('url'), res.get('stream_url')))
    cmd_KTAMV_STOP_PREVIEW_help = "Stop annotating the preview stream"
    def cmd_KTAMV_STOP_PREVIEW(self, gcmd):
        res = self.client.call(gcmd, 'preview', {'action': 'stop'})
        self.client.preview_info = res
        gcmd.respond_info("kTAMV: preview annotation stopped.")
    cmd_KTAMV_SEND_SERVER_CFG_help = ("Send the camera settings to the vision"
                                      " helper again (optional CAMERA_URL=)")
    def cmd_KTAMV_SEND_SERVER_CFG(self, gcmd):
        url = gcmd.get('CAMERA_URL', None)
        tolerance = gcmd.get_float(
            'DETECTION_TOLERANCE', self.opts.detection_tolerance, minval=0.,
            maxval=50.)
        if url is not None:
            self.opts.camera_url = url
        self.opts.detection_tolerance = tolerance
        # A detection from the old camera (or settings) is not one now.
        self.finder.forget()
        self.client.call(gcmd, 'version', {'check_camera': False})
        try:
            self.client.configure_now()
        except HelperFailure as e:
            raise gcmd.error("kTAMV: %s" % (e.message,))
        gcmd.respond_info("kTAMV: helper configured for camera %s."
                          % (self.opts.camera_url,))
    # Status for macros
    cmd_KTAMV_VERIFY_OFFSET_help = ("Re-centre the active tool with its "
                                    "G-code offset in force; report the error")
    def cmd_KTAMV_VERIFY_OFFSET(self, gcmd):
        self.verifier.command(gcmd, self)
    cmd_KTAMV_PROGRESS_help = "Show a macro's step in printer.ktamv.progress"
    def cmd_KTAMV_PROGRESS(self, gcmd):
        self.progress.command(gcmd)
    def get_status(self, eventtime):
        model = self.finder.model
        det = self.finder.last_detection
        status = self.book.get_status()
        status.update({
            'mm_per_pixels': model.mm_per_px() if model else 0.,
            'is_calibrated': model is not None,
            'travel_speed': self.opts.move_speed,
            'last_nozzle_center_successful':
                self.last_nozzle_center_successful,
            'helper_state': self.helper.state,
            'helper_pid': self.helper.get_pid(),
            'helper_version': self.helper.ready_info.get('helper'),
            'helper_error': self.client.error(),
            'last_detection': dict(det) if det else None,
            'camera_model': model.summary() if model else None,
            'last_center_moves': self.finder.last_center_moves,
            'camera_position': (list(self.opts.camera_position)
                                if self.opts.camera_position else None),
            'preview_url': (self.client.preview_info or {}).get('url'),
            'progress': self.progress.get_status(),
            'verification': self.verifier.get_status(),
            'last_search': self.last_search,
        })
        return status

def load_config(config):
    return Ktamv(config)
