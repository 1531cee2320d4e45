"""The helper's methods: configure, detect, grab, fit_camera_model, preview,
version, shutdown and sim_truth (see ``docs/protocol.md``).

:class:`Service` holds the settings, the open camera and the preview server.
``server.py`` calls :meth:`Service.call` from worker threads, so every method
is safe to run concurrently. OpenCV, numpy and the detector are imported inside
the methods: importing this module is cheap.
"""

import logging
import math
import os
import sys
import threading
import time

from ktamv_helper import PROTOCOL_VERSION, __version__
from ktamv_helper.cameras import public_url
from ktamv_helper.cameras.base import Frame
from ktamv_helper.errors import HelperError
from ktamv_helper.freshness import FrameRule, frame_digest, just_after

log = logging.getLogger("ktamv_helper.service")

_REQUIRED = object()

# The longest a version check waits for a frame: it must answer promptly.
VERSION_CHECK_TIMEOUT = 2.0
# Longest close() waits for a camera still being opened, seconds.
CLOSE_JOIN = 0.2
# A camera whose picture lags a move by more than this is not measured.
LATENCY_WINDOW = 1.0
# Most machine.moves accepted per request (the extra sends at most this).
from ktamv_helper.limits import (DEFAULT_MIN_RADIUS,  # noqa: E402
                                 LATENCY_SHIFT_PX, MAX_CAMERA_TIMEOUT,
                                 MAX_MOVES, MIN_CAMERA_TIMEOUT)


# ---------------------------------------------------------------- parameters

def _bad(name, message):
    return HelperError("invalid_params", "Parameter %r %s." % (name, message),
                       {"param": name})


def number_param(params, name, default=_REQUIRED, low=None, high=None,
                 low_open=False):
    """A finite number from ``params`` within ``[low, high]``.

    ``low_open`` makes the lower bound exclusive (``> low``). A missing or
    ``null`` value gives ``default``; without a default it is an error.
    """
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise _bad(name, "is required")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, "must be a number, not %s" % type(value).__name__)
    value = float(value)
    if not math.isfinite(value):
        raise _bad(name, "must be a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise _bad(name, "must be %s %g (got %g)"
                   % (">" if low_open else ">=", low, value))
    if high is not None and value > high:
        raise _bad(name, "must be <= %g (got %g)" % (high, value))
    return value


def int_param(params, name, default=_REQUIRED, low=None, high=None):
    """An integer from ``params`` within ``[low, high]`` (``3.0`` is fine)."""
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise _bad(name, "is required")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "must be an integer, not %r" % (value,))
    if low is not None and value < low:
        raise _bad(name, "must be >= %d (got %d)" % (low, value))
    if high is not None and value > high:
        raise _bad(name, "must be <= %d (got %d)" % (high, value))
    return value


def bool_param(params, name, default=_REQUIRED):
    """A JSON boolean from ``params``."""
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise _bad(name, "is required")
        return default
    if not isinstance(value, bool):
        raise _bad(name, "must be true or false, not %r" % (value,))
    return value


def string_param(params, name, default=_REQUIRED, choices=None):
    """A non-empty string from ``params``, optionally one of ``choices``."""
    value = params.get(name)
    if value is None:
        if default is _REQUIRED:
            raise _bad(name, "is required")
        return default
    if not isinstance(value, str) or not value.strip():
        raise _bad(name, "must be a non-empty string, not %r" % (value,))
    if choices is not None and value not in choices:
        raise _bad(name, "must be one of %s (got %r)"
                   % (", ".join(choices), value))
    return value


def point_param(value, name, length=2):
    """A list of ``length`` finite numbers, as floats."""
    if (not isinstance(value, (list, tuple)) or len(value) != length
            or any(isinstance(v, bool) or not isinstance(v, (int, float))
                   or not math.isfinite(v) for v in value)):
        raise _bad(name, "must be a list of %d finite numbers, not %r"
                   % (length, value))
    return [float(v) for v in value]


def _position(value, name):
    """A machine position: 2 or 3 finite numbers (mm)."""
    length = len(value) if isinstance(value, (list, tuple)) else 0
    return point_param(value, name, 3 if length != 2 else 2)


def _tell_machine_state(camera, position, tool, moves):
    if moves:
        camera.set_machine_state(position, tool, moves)
    else:
        camera.set_machine_state(position, tool)


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return 0.5 * (ordered[mid - 1] + ordered[mid])


def _to_float(value):
    return float(value)


# ---------------------------------------------------------------- bore size

class BoreExpectation:
    """What a detect request knows of the bore: its size, static features,
    where a move put it.

    ``nozzle_diameter`` (mm) with ``mm_per_px`` (the calibrated scale) give
    the expected bore radius in px; ``calibrated_size`` is the ``[width,
    height]`` of the frames that scale was measured on; ``exclude`` lists
    ``[u, v]`` centres of features known not to move with the nozzle;
    ``near`` is ``[u, v, reach]``, where the camera model puts the nozzle
    after a move.
    """

    def __init__(self, params, tolerance):
        self.nozzle_diameter = params.get("nozzle_diameter")
        self.mm_per_px = params.get("mm_per_px")
        self.from_scale = False
        self.tolerance = tolerance
        self.expected_radius = None
        if self.nozzle_diameter is not None or self.mm_per_px is not None:
            self.nozzle_diameter = number_param(params, "nozzle_diameter", 0.4,
                                                low=0.05, high=5.0)
            self.mm_per_px = number_param(params, "mm_per_px", 0.01,
                                          low=1e-5, high=1.0)
            if params.get("mm_per_px") is not None:
                self.expected_radius = 0.5 * self.nozzle_diameter / self.mm_per_px
                self.from_scale = True
        self.calibrated_size = None
        if params.get("calibrated_size") is not None:
            size = point_param(params["calibrated_size"], "calibrated_size")
            if not all(v >= 1 and v.is_integer() for v in size):
                raise _bad("calibrated_size", "must be [width, height] in whole "
                           "pixels, not %r" % (params["calibrated_size"],))
            self.calibrated_size = tuple(int(v) for v in size)
        if params.get("expected_radius") is not None:
            # Said outright (calibration: the size seen at its start point).
            self.from_scale = False
            self.expected_radius = number_param(params, "expected_radius", 10.0,
                                                low=0.5, high=5000.0)
        exclude = params.get("exclude", [])
        if not isinstance(exclude, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool)
                    and math.isfinite(x) for x in p) for p in exclude):
            raise _bad("exclude", "must be a list of [u, v] pixel positions")
        self.exclude = [tuple(float(x) for x in p) for p in exclude]
        self.near = None
        if params.get("near") is not None:
            self.near = tuple(point_param(params["near"], "near", 3))
            if self.near[2] <= 0:
                raise _bad("near", "must be [u, v, reach] with a reach above "
                                   "0 px, not %r" % (params["near"],))

    def check_frame_size(self, size):
        """Refuse frames of another size than the camera was calibrated
        at: the scale (and so every move and the expected bore size) would
        be wrong by the ratio, and a camera may crop rather than scale when
        its mode changes, so the model cannot be rescaled."""
        if self.calibrated_size is None or tuple(size) == self.calibrated_size:
            return
        raise HelperError(
            "camera_size_changed",
            "The camera sends %dx%d frames but was calibrated at %dx%d, so "
            "its scale (camera_matrix) no longer holds: set the camera back "
            "to %dx%d or run KTAMV_CALIB_CAMERA again; nothing was measured."
            % (tuple(size) + self.calibrated_size * 2),
            {"frame_size": list(size), "calibrated_size": list(self.calibrated_size)})

    def find(self, image, settings):
        """The :class:`~ktamv_helper.detection.BoreSearch` of one frame."""
        from ktamv_helper.detection import find_bore
        return find_bore(image, settings.min_radius, settings.max_radius or None,
                         expected_radius=self.expected_radius,
                         exclude=self.exclude, tolerance=self.tolerance,
                         near=self.near)

    def refused(self, refusals, seen):
        """The error for frames whose bores were seen but refused."""
        last = refusals[-1]
        details = {"frames_seen": seen, "frames_refused": len(refusals),
                   "candidates": [{"center": list(d.center), "radius": d.radius,
                                   "rings": list(d.rings)} for d in last.candidates]}
        if last.refusal == "size_mismatch":
            found = last.candidates[0].radius
            if self.from_scale:
                message = ("Found a circle of %.1f px radius; a %.2f mm bore is "
                           "about %.1f px at %.4f mm/px. Is nozzle_diameter "
                           "right, or is the camera seeing the cone or the tip "
                           "face? Nothing was measured."
                           % (found, self.nozzle_diameter, self.expected_radius,
                              self.mm_per_px))
            else:
                message = ("Found a circle of %.1f px radius where the nozzle "
                           "measured %.1f px before: the camera sees something "
                           "else (the cone, the tip face, dirt). Nothing was "
                           "measured." % (found, self.expected_radius))
            return HelperError("nozzle_size_mismatch", message, details)
        if last.refusal == "not_near":
            message = ("The nozzle is not where the camera model says the "
                       "move put it: %s. If the camera, its focus or the tool "
                       "moved since KTAMV_CALIB_CAMERA, calibrate again; nothing "
                       "was measured." % last.message)
            return HelperError("nozzle_not_where_expected", message, details)
        message = ("Not sure which circle is the nozzle: %s. Clean the nozzle "
                   "and the lens, or set nozzle_diameter so the bore's size "
                   "decides; nothing was measured." % last.message)
        return HelperError("nozzle_ambiguous", message, details)


# ---------------------------------------------------------------- settings

class Settings:
    """Validated ``configure`` parameters."""

    def __init__(self, params):
        self.camera_url = string_param(params, "camera_url").strip()
        from ktamv_helper.cameras import camera_kind
        try:
            if camera_kind(self.camera_url) == "sim":
                # Cheap to check now, and a typo is better caught here.
                from ktamv_helper.cameras.sim import parse_sim_url
                parse_sim_url(self.camera_url)
        except HelperError as exc:
            message = exc.message
            if "camera_url" not in message:
                message = "Parameter 'camera_url': " + message
            raise HelperError(exc.code, message,
                              dict(exc.details, param="camera_url"))
        self.detection_tolerance = number_param(
            params, "detection_tolerance", 1.0, low=0.0, low_open=True,
            high=1000.0)
        # The preview's target circle: how close centring must get (the
        # extra's center_tolerance), not the frames' agreement tolerance.
        self.target_tolerance = number_param(
            params, "target_tolerance", self.detection_tolerance, low=0.0,
            low_open=True, high=1000.0)
        self.camera_timeout = number_param(params, "camera_timeout", 5.0,
                                           low=MIN_CAMERA_TIMEOUT,
                                           high=MAX_CAMERA_TIMEOUT)
        self.min_radius = number_param(params, "min_radius", DEFAULT_MIN_RADIUS,
                                       low=1.0, high=5000.0)
        # 0: up to 0.7 of the frame height (a zoomed camera's bore may fill
        # most of the frame).
        self.max_radius = number_param(params, "max_radius", 0.0, low=0.0,
                                       high=5000.0)
        if self.max_radius and self.max_radius <= self.min_radius:
            raise _bad("max_radius", "must be larger than min_radius (%g)"
                       % self.min_radius)
        debug_dir = params.get("debug_dir")
        if debug_dir is not None and (not isinstance(debug_dir, str)
                                      or not debug_dir.strip()):
            raise _bad("debug_dir", "must be a folder path or null")
        self.debug_dir = (os.path.expanduser(debug_dir.strip())
                          if debug_dir else None)
        self.debug_keep = int_param(params, "debug_keep", 20, low=1,
                                    high=100000)
        self.preview_host = string_param(params, "preview_host", "127.0.0.1")
        self.preview_port = int_param(params, "preview_port", 0, low=0,
                                      high=65535)
        self.preview_fps = number_param(params, "preview_fps", 10.0, low=0.5,
                                        high=30.0)

    @property
    def preview_key(self):
        if not self.preview_port:
            return None
        return (self.preview_host, self.preview_port, self.preview_fps)


# ---------------------------------------------------------------- service

class DetectRequest:
    """Validated ``detect`` parameters and the bounds they imply."""

    def __init__(self, params, received, settings, rule):
        self.received = received
        self.frames = int_param(params, "frames", 3, low=1, high=50)
        self.earliest = rule.earliest(params, received)
        self.timeout = number_param(params, "timeout",
                                    min(60.0, settings.camera_timeout
                                        + 2.0 * self.frames / 5.0),
                                    low=0.1, high=60.0)
        self.tolerance = number_param(params, "tolerance",
                                      settings.detection_tolerance, low=0.0,
                                      low_open=True, high=1000.0)
        self.max_frames = int_param(params, "max_frames", 3 * self.frames + 2,
                                    low=self.frames, high=1000)
        self.deadline = received + self.timeout
        # The picture before the move, so the camera's latency can be
        # measured from the first frame that shows the move.
        reference = params.get("reference")
        self.reference = (None if reference is None
                          else point_param(reference, "reference"))
        self.moved_at = number_param(params, "moved_at", received)
        self.unchanged_seen = False     # latency measurement (Detection)
        self.bore = BoreExpectation(params, self.tolerance)
        # A search expects misses: it skips looking for a bore below
        # min_radius, which costs a second search of the frame.
        self.advice = bool_param(params, "advice", True)


class DetectRun:
    """What one detection saw: frames with a nozzle, and why it stopped."""

    def __init__(self):
        self.detections, self.frames = [], []
        self.summed = []            # frames each detection's picture adds up
        self.seen = 0
        self.frame_size = None
        self.last_image = self.last_detection = None
        self.stopped_by = None      # "timeout" or the camera's HelperError
        self.agreed = None          # consensus (center, used, spread)
        self.refusals = []          # frames whose bores were refused
        self.dim = DimFrameSum()


# Sums made of a dim view before giving up while none has shown a bore.
EMPTY_SUMS = 2


class DimFrameSum:
    """A dim camera's frames of one detection, summed into longer exposures
    (:mod:`ktamv_helper.detection.stacking`).

    A dim frame in which no bore was found alone starts summing: it and
    the frames after it (the same still scene: the freshness rule admits
    only frames taken after the move) go into sums of ``depth`` frames
    without being searched alone, which on a noisy dim frame costs the
    most, for as long as the picture stays dim (auto exposure may brighten
    it). A frame whose pixels repeat one already in the sum (a server
    sending a picture twice) adds no exposure and is left out.
    """

    def __init__(self):
        self.frames = []        # (Frame, digest) of the sum being made
        self.depth = 1          # frames per sum
        self.summing = False    # a frame alone showed no bore: sum the rest
        self.sums = 0           # sums made
        self.found = 0          # sums that showed a bore

    def collecting(self, frame):
        """Whether ``frame`` goes straight into a sum."""
        from ktamv_helper.detection.stacking import stack_depth
        if not self.summing:
            return False
        depth = stack_depth(frame.image)
        if depth < 2 or (self.frames and frame.image.shape != self.frames[0][0].image.shape):
            self.frames, self.summing = [], False
            return False
        if not self.frames:
            self.depth = depth
        return True

    def start(self, frame):
        """Whether ``frame``, which showed no bore alone, is dim enough to
        start summing (it is then :meth:`add`-ed like the rest)."""
        from ktamv_helper.detection.stacking import stack_depth
        self.depth = stack_depth(frame.image)
        self.summing = self.depth >= 2
        return self.summing

    def frame_budget(self, request):
        """Most frames the request may read. While summing, a look is one
        sum, and as a sum already averages its frames' noise away, fewer
        looks are retried: two sums until one shows a bore (more would not
        where two did not), then ``frames`` + 2 (at most ``max_frames``),
        so a dim view without a nozzle (a search's empty positions) costs
        about the frames a bright one does."""
        if self.depth < 2:
            return request.max_frames
        looks = request.frames + 2 if self.found else EMPTY_SUMS
        return 1 + min(request.max_frames, looks) * self.depth

    def add(self, frame):
        """Add ``frame``; the Frame of the sum once it is complete, else None."""
        from ktamv_helper.detection.stacking import sum_frames
        digest = frame_digest(frame.image)
        if any(digest == seen for _, seen in self.frames):
            return None
        self.frames.append((frame, digest))
        if len(self.frames) < self.depth:
            return None
        images = [f.image for f, _ in self.frames]
        self.frames = []
        self.sums += 1
        return Frame(sum_frames(images), frame.timestamp, frame.captured)


def _superseded():
    return HelperError("cancelled", "This detection was cancelled by a newer "
                       "one on the same camera (the extra stopped waiting "
                       "for it).")


class _Opening:
    """A camera being opened in the background."""

    def __init__(self, url, timeout):
        self.url = url
        self.timeout = timeout
        self.done = threading.Event()
        self.camera = None
        self.error = None
        self.thread = None


class CameraAccess:
    """The open camera and the machine state it hears (part of Service)."""

    def _apply_machine(self, machine):
        if machine is None:
            return
        if not isinstance(machine, dict):
            raise _bad("machine", "must be an object with position and tool")
        position = machine.get("position")
        if position is not None:
            position = _position(position, "machine.position")
        tool = machine.get("tool")
        if tool is not None and not isinstance(tool, (str, int)):
            raise _bad("machine.tool", "must be a tool name (string)")
        moves = machine.get("moves") or []
        if not isinstance(moves, list) or len(moves) > MAX_MOVES:
            raise _bad("machine.moves", "must be a list of at most %d "
                       "positions" % MAX_MOVES)
        moves = [_position(m, "machine.moves[%d]" % i)
                 for i, m in enumerate(moves)]
        with self._lock:
            camera = self._camera
            if camera is None:
                # Replayed once when the camera opens (sim:// needs them).
                pending = self._machine[2] if self._machine else []
                self._machine = (position, tool, (pending + moves)[-MAX_MOVES:])
            else:
                self._machine = (position, tool, [])
        if camera is not None:
            _tell_machine_state(camera, position, tool, moves)

    # -- state helpers

    def _require_settings(self):
        with self._lock:
            settings = self._settings
        if settings is None:
            raise HelperError("not_configured",
                              "The helper has no camera yet: the extra must "
                              "send configure first (check nozzle_cam_url in "
                              "[ktamv] and run KTAMV_SEND_SERVER_CFG).")
        return settings

    def _get_camera(self, settings, wait=None):
        """The open camera for ``settings``, opening it on first use.

        Opening (an HTTP probe) runs in its own thread and the caller waits
        at most ``wait`` seconds (default ``camera_timeout``), so a camera
        that hangs never holds up a request longer than its own bound; a
        later request picks up the camera once it has opened.
        """
        wait = settings.camera_timeout if wait is None else wait
        with self._lock:
            if (self._camera is not None
                    and self._camera_url == settings.camera_url):
                return self._camera
            opening = self._opening
            if opening is None or opening.url != settings.camera_url:
                opening = _Opening(settings.camera_url, settings.camera_timeout)
                self._opening = opening
                opening.thread = threading.Thread(
                    target=self._open_camera, args=(opening,),
                    name="ktamv-camera-open", daemon=True)
                opening.thread.start()
        if not opening.done.wait(max(0.0, wait)):
            raise HelperError("camera_timeout",
                              "The camera at %s did not answer within %.1f s: "
                              "check that it is running and not overloaded, "
                              "or raise camera_timeout."
                              % (public_url(opening.url), wait))
        if opening.error is not None:
            error = opening.error
            raise HelperError(error.code, error.message, error.details)
        return opening.camera

    def _open_camera(self, opening):
        """Thread body: open ``opening.url`` and install it if still wanted."""
        camera = None
        try:
            from ktamv_helper.cameras import open_camera
            camera = open_camera(opening.url, opening.timeout)
        except HelperError as exc:
            opening.error = exc
        except Exception as exc:
            log.exception("opening camera %s failed", public_url(opening.url))
            opening.error = HelperError(
                "camera_unreachable", "Opening the camera %s failed: %s: %s"
                % (public_url(opening.url), type(exc).__name__, exc))
        machine = None
        with self._lock:
            wanted = (not self._closed and self._opening is opening
                      and self._settings is not None
                      and self._settings.camera_url == opening.url)
            if self._opening is opening:
                self._opening = None
            if camera is not None and wanted:
                self._camera = camera
                self._camera_url = opening.url
                machine = self._machine
                if machine is not None:
                    self._machine = (machine[0], machine[1], [])
        if camera is not None and not wanted:
            camera.close()
            opening.error = HelperError("camera_unreachable",
                                        "The camera changed while %s was "
                                        "being opened; try again."
                                        % public_url(opening.url))
        elif camera is not None:
            opening.camera = camera
            if machine is not None:
                try:
                    _tell_machine_state(camera, *machine)
                except HelperError as exc:
                    opening.error = exc
        opening.done.set()

    def _close_camera(self):
        with self._lock:
            camera, self._camera, self._camera_url = self._camera, None, None
        if camera is not None:
            try:
                camera.close()
            except Exception:
                log.exception("closing camera %s failed", camera.url)



class PreviewAccess:
    """The preview server: (re)started by configure, fed by every frame
    examined, annotating on request (part of Service)."""

    def _configure_preview(self, settings):
        key = settings.preview_key
        with self._lock:
            if key == self._preview_key and (self._preview is not None
                                             or key is None):
                return
            old, self._preview = self._preview, None
            self._preview_key = key
            self._preview_error = None
            annotating = self._annotating
        if old is not None:
            try:
                old.close()
            except Exception:
                log.exception("closing the preview server failed")
        if key is None:
            with self._lock:
                self._annotating = False
            return
        host, port, fps = key
        try:
            from ktamv_helper.preview import PreviewServer
            preview = PreviewServer(host, port, fps)
            preview.start()
        except OSError as exc:
            # PreviewServer.start words its OSError for the user already.
            self._preview_failed(str(exc))
            return
        except Exception as exc:
            self._preview_failed("The preview server failed to start: %s: %s"
                                 % (type(exc).__name__, exc))
            return
        with self._lock:
            self._preview = preview
        if annotating:
            self._start_annotating(preview)

    def _preview_failed(self, error):
        with self._lock:
            self._preview_error = error
            self._annotating = False
        self._log_event("warning", error)

    def _preview_status(self):
        with self._lock:
            preview = self._preview
            error = self._preview_error
            annotating = self._annotating
        status = {"running": False, "annotating": False, "url": None,
                  "stream_url": None, "snapshot_url": None, "clients": 0,
                  "error": error}
        if preview is None:
            return status
        try:
            status.update(preview.status())
        except Exception as exc:
            status["error"] = "preview status failed: %s" % exc
        status.setdefault("annotating", annotating)
        status["error"] = status.get("error") or error
        return status

    def _publish(self, image, detection=None, tolerance=None, status_lines=()):
        with self._lock:
            preview = self._preview
        if preview is None:
            return
        try:
            preview.publish(image, detection=detection, tolerance_px=tolerance,
                            status_lines=self._preview_lines(status_lines))
        except Exception:
            log.exception("publishing a frame to the preview failed")

    def _note_for_preview(self, key, text):
        with self._lock:
            self._preview_notes[key] = text

    def _preview_lines(self, state_lines):
        """The preview's status text: state, last result, scale."""
        with self._lock:
            notes = (self._preview_notes["last"], self._preview_notes["scale"])
        return tuple(state_lines) + tuple(note for note in notes if note)

    # -- preview

    def preview(self, params, received):
        action = string_param(params, "action", "status",
                              choices=("start", "stop", "status"))
        with self._lock:
            preview = self._preview
            configured = self._preview_key is not None
        if action == "start" and not configured:
            status = self._preview_status()
            status["error"] = ("The preview is off: set preview_port in "
                               "[ktamv] to serve one.")
            return status
        if action == "start":
            with self._lock:
                self._annotating = preview is not None
            if preview is not None:
                self._start_annotating(preview)
        elif action == "stop":
            with self._lock:
                self._annotating = False
            if preview is not None:
                preview.stop_continuous()
        return self._preview_status()

    def _start_annotating(self, preview):
        state = {"earliest": None}

        def produce():
            settings = self._require_settings()
            camera = self._get_camera(settings)
            frame = camera.get_frame(not_before=state["earliest"],
                                     timeout=settings.camera_timeout)
            state["earliest"] = just_after(frame.timestamp)
            from ktamv_helper.detection import detect_nozzle
            detection = detect_nozzle(frame.image, settings.min_radius,
                                      settings.max_radius or None)
            return (frame, detection, settings.target_tolerance,
                    self._preview_lines(("live preview",)))

        preview.start_continuous(produce)


def _picture_advice(image, settings, look_smaller=True):
    """What the last frame of a failed detection says the user can change:
    its exposure, or (``look_smaller``) a bore smaller than ``min_radius``;
    "" if nothing."""
    from ktamv_helper.detection import exposure_problem, smaller_bore, to_gray
    problem = exposure_problem(to_gray(image))
    if problem:
        return " " + problem
    small = smaller_bore(image, settings.min_radius) if look_smaller else None
    if small is None:
        return ""
    return (" A bore of %.1f px radius was seen at (%.0f, %.0f), below "
            "min_radius (%g px): if that is the nozzle, set min_radius: %g "
            "in [ktamv]." % (small.radius, small.center[0], small.center[1],
                             settings.min_radius, math.floor(small.radius)))


class Detection:
    """``detect`` in steps: capture fresh frames, show each on the preview,
    run the consensus, shape the result or the error (part of Service)."""

    def detect(self, params, received):
        # Heavy imports first (the first call's ~0.3 s): frames are fetched
        # only once the detector is ready for them.
        import ktamv_helper.consensus  # noqa: F401
        import ktamv_helper.detection  # noqa: F401
        settings = self._require_settings()
        request = DetectRequest(params, received, settings, self._rule)
        camera = self._get_camera(settings,
                                  request.deadline - time.monotonic())
        ticket = self._take_detect_turn(request.deadline)
        try:
            run = self._collect(camera, settings, request, ticket)
        finally:
            self._end_detect_turn()
        if run.agreed is not None:
            return self._detect_result(run, request)
        if run.seen == 0 and run.stopped_by == "timeout":
            raise HelperError("camera_timeout",
                              "No fresh frame from %s within %.1f s: check "
                              "that the camera is streaming."
                              % (public_url(settings.camera_url),
                                 request.timeout))
        raise self._detect_failed(settings, request, run)

    # One detect at a time per camera: a newer request (the extra's retry
    # after a timeout) cancels the one running, which stops between frames.
    def _take_detect_turn(self, deadline):
        with self._detect_cond:
            self._detect_ticket += 1
            ticket = self._detect_ticket
            self._detect_cond.notify_all()
            while self._detect_busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HelperError(
                        "camera_timeout", "The previous detection on this "
                        "camera did not stop in time: the camera is stalled;"
                        " check that it is streaming.")
                self._detect_cond.wait(remaining)
                if self._detect_ticket != ticket:
                    raise _superseded()
            self._detect_busy = True
        return ticket

    def _end_detect_turn(self):
        with self._detect_cond:
            self._detect_busy = False
            self._detect_cond.notify_all()

    def _fresh_frame(self, camera, earliest, cursor, timeout):
        """The next frame the freshness rule accepts (arrival after cursor)."""
        deadline = time.monotonic() + timeout
        while True:
            if earliest is None:
                return camera.get_frame(not_before=cursor, timeout=max(
                    0.05, deadline - time.monotonic()))
            frame = camera.get_frame(
                not_before=cursor,
                timeout=max(0.05, deadline - time.monotonic()))
            if self._rule.accepts(frame, earliest):
                return frame
            cursor = just_after(frame.timestamp)
            if time.monotonic() >= deadline:
                raise HelperError("camera_timeout",
                                  "No frame captured after the move came "
                                  "from the camera within %.1f s." % timeout)

    def _collect(self, camera, settings, request, ticket):
        """Examine fresh frames until enough agree, or a bound is hit."""
        run = DetectRun()
        measuring = (request.reference is not None
                     and self._rule.latency is None)
        cursor = request.moved_at if measuring else request.earliest
        while run.seen < run.dim.frame_budget(request):
            if self._detect_ticket != ticket:
                raise _superseded()
            remaining = request.deadline - time.monotonic()
            if remaining <= 0:
                run.stopped_by = "timeout"
                break
            try:
                # While measuring the latency, frames from the move's end on
                # are watched; only those the rule accepts are examined.
                frame = self._fresh_frame(
                    camera, None if measuring else request.earliest, cursor,
                    min(remaining, settings.camera_timeout))
            except HelperError as exc:
                if run.seen == 0:
                    raise
                run.stopped_by = exc
                break
            cursor = just_after(frame.timestamp)
            if measuring:
                measuring = self._measure_latency(frame, settings, request)
                if measuring or not self._rule.accepts(frame,
                                                       request.earliest):
                    continue
            self._examine(frame, settings, request, run)
            if run.agreed is not None:
                break
        return run

    def _measure_latency(self, frame, settings, request):
        """Watch frames after a move for the first that shows it; its
        arrival after the move's end is the camera's latency, noted once
        per session. Only a change seen after a frame that still showed the
        old place counts (else it is just an upper bound: the next move
        tries again). Returns False when done (measured or given up)."""
        from ktamv_helper.detection import detect_nozzle
        from ktamv_helper.detection.stacking import stack_depth
        if frame.timestamp - request.moved_at > LATENCY_WINDOW:
            return False        # never changed: the extra's frozen check
        detection = detect_nozzle(frame.image, settings.min_radius,
                                  settings.max_radius or None)
        if detection is None:
            # A picture too dim to show the bore alone cannot show the
            # frame the move arrives in: not measured on this move.
            return stack_depth(frame.image) < 2
        shift = math.hypot(detection.center[0] - request.reference[0],
                           detection.center[1] - request.reference[1])
        if shift < LATENCY_SHIFT_PX:
            request.unchanged_seen = True
            return True
        if not request.unchanged_seen:
            return False
        latency = self._rule.note_latency(frame.timestamp - request.moved_at)
        self._log_event("info", "The camera's frames arrive %.3f s after "
                        "what they show (measured on a move); frames are "
                        "judged by that from now on." % latency)
        return False

    def _examine(self, frame, settings, request, run):
        """Detect the nozzle in one frame, show it, and try the consensus."""
        from ktamv_helper.consensus import consensus
        request.bore.check_frame_size(frame.size)
        run.seen += 1
        run.frame_size = frame.size
        run.last_image = frame.image
        look = self._look(frame, settings, request, run)
        lines = ("detect: frame %d of at most %d, %d with a nozzle"
                 % (run.seen, run.dim.frame_budget(request), len(run.detections)
                    + (look is not None and look[0].detection is not None)),)
        if look is None:
            self._publish(frame, None, settings.target_tolerance, lines + (
                "dim picture: summing frames, %d of %d" % (len(run.dim.frames),
                                                           run.dim.depth),))
            return
        search, shown, summed = look
        detection = search.detection
        if search.refusal:
            run.refusals.append(search)
        run.last_detection = detection
        if summed > 1:
            lines += ("dim picture: %d frames summed" % summed,)
        self._publish(shown, detection, settings.target_tolerance, lines)
        if detection is None:
            return
        run.detections.append(detection)
        run.frames.append(frame)
        run.summed.append(summed)
        run.agreed = consensus([tuple(d.center) for d in run.detections],
                               request.tolerance, request.frames)

    def _look(self, frame, settings, request, run):
        """The search of one frame, or of the sum of dim frames it
        completes (:class:`DimFrameSum`): ``(BoreSearch, the Frame
        searched, frames it adds up)``; None while a sum is being made."""
        dim = run.dim
        if not dim.collecting(frame):
            search = request.bore.find(frame.image, settings)
            if search.detection is not None or search.refusal or not dim.start(frame):
                return search, frame, 1
        summed = dim.add(frame)
        if summed is None:
            return None
        search = request.bore.find(summed.image, settings)
        dim.found += search.detection is not None
        return search, summed, dim.depth

    def _detect_result(self, run, request):
        center, used, spread = run.agreed
        used = [int(i) for i in used]
        newest = max(used, key=lambda i: run.frames[i].timestamp)
        self._note_for_preview(
            "last", "last: nozzle at %.2f, %.2f px (%d of %d frames, "
            "spread %.2f px)" % (center[0], center[1], len(used), run.seen,
                                  spread))
        return {
            "center": [_to_float(center[0]), _to_float(center[1])],
            "radius": _to_float(_median([run.detections[i].radius
                                         for i in used])),
            "score": _to_float(_median([run.detections[i].score
                                        for i in used])),
            "frames_used": len(used),
            "frames_seen": run.seen,
            "frames_summed": max(run.summed[i] for i in used),
            "spread": _to_float(spread),
            "frame_size": list(run.frame_size),
            "frame_time": run.frames[newest].timestamp,
            "frame_digest": frame_digest(run.frames[newest].image),
            "latency": self._rule.latency,
            "elapsed": time.monotonic() - request.received,
            "rings": list(run.detections[used[0]].rings),
            "rms": _to_float(_median([run.detections[i].rms for i in used])),
            "edge_width": _to_float(_median([run.detections[i].edge_width
                                             for i in used])),
        }

    def _detect_failed(self, settings, request, run):
        """The error of a detection without consensus; the camera leads."""
        seen, found = run.seen, len(run.detections)
        details = {"frames_seen": seen, "frames_with_nozzle": found}
        plural = "" if seen == 1 else "s"
        if not run.detections:
            code = "nozzle_not_found"
            summary = ("no nozzle found in %d frame%s from the camera"
                       % (seen, plural))
            if run.dim.sums:
                summary += (", alone or summed %d at a time as the dim "
                            "picture asked" % run.dim.depth)
            advice = (" Make sure the nozzle is in view and near the image "
                      "centre, in focus, clean (no ooze or filament on the "
                      "tip), and evenly lit.")
            if run.last_image is not None:
                advice = _picture_advice(run.last_image, settings,
                                         request.advice) + advice
        else:
            code = "no_consensus"
            summary = ("the nozzle was found in %d of %d frames but fewer "
                       "than %d agreed within %.2g px"
                       % (found, seen, request.frames, request.tolerance))
            advice = (" Keep the printer still, check focus and lighting, "
                      "clean the nozzle, or raise detection_tolerance.")
        stopped_by = run.stopped_by
        # Refused in at least as many frames as found: the refusal (two
        # bores, a wrong size) is what the user must hear about.
        if run.refusals and len(run.refusals) >= found and \
                not isinstance(stopped_by, HelperError):
            return self._refused(settings, request, run)
        if isinstance(stopped_by, HelperError):
            # The camera is the cause: its error code and sentence first.
            code = stopped_by.code
            details["camera_error"] = stopped_by.code
            message = ("The camera failed after %d frame%s: %s (Before "
                       "that, %s.)" % (seen, plural, stopped_by.message,
                                       summary))
        else:
            why = " The request's time ran out." if stopped_by else ""
            message = summary[0].upper() + summary[1:] + "." + why + advice
        self._note_for_preview("last", "last: %s after %d frame%s" % (
            code.replace("_", " "), seen, plural))
        if settings.debug_dir and run.last_image is not None:
            paths = self._save_debug(settings, run.last_image,
                                     "nozzle_not_found" if not found
                                     else "no_consensus", run.last_detection)
            if paths:
                details["debug_files"] = paths
                message += " Frames saved for inspection: %s." % ", ".join(paths)
        return HelperError(code, message, details)

    def _refused(self, settings, request, run):
        """Bores were seen but none could be chosen safely: say why."""
        error = request.bore.refused(run.refusals, run.seen)
        if run.last_image is not None:
            # The extra tells a frozen stream from a nozzle that moved.
            error.details["frame_digest"] = frame_digest(run.last_image)
        if settings.debug_dir and run.last_image is not None:
            paths = self._save_debug(settings, run.last_image, error.code,
                                     run.refusals[-1].candidates[0])
            if paths:
                error.details["debug_files"] = paths
                error.message += (" Frames saved for inspection: %s."
                                  % ", ".join(paths))
        return error

    def _save_debug(self, settings, image, reason, detection):
        try:
            from ktamv_helper.debug_frames import save_failure
            return [str(p) for p in save_failure(settings.debug_dir,
                                                 settings.debug_keep, image,
                                                 reason, detection=detection)]
        except Exception as exc:
            self._log_event("warning", "Could not save the failed frame to "
                            "%s: %s" % (settings.debug_dir, exc))
            return []



class Service(CameraAccess, PreviewAccess, Detection):
    """The state behind the protocol methods.

    The camera, preview and detect concerns are the mixins above; they
    share this object's state and lock (set up here), so each stays small.

    Parameters
    ----------
    emit_event : callable, optional
        ``emit_event(dict)`` sends an unsolicited event line (``log``).
    """

    def __init__(self, emit_event=None):
        self._emit_event = emit_event
        self._lock = threading.RLock()     # settings, camera and preview refs
        self._opening = None                # _Opening in progress
        self._settings = None
        self._camera = None
        self._camera_url = None
        self._machine = None
        self._preview = None
        self._preview_key = None
        self._preview_error = None
        self._annotating = False
        # Shown on every preview frame: last detect result, calibrated scale.
        self._preview_notes = {"last": None, "scale": None}
        self._closed = False
        self._rule = FrameRule()
        self._detect_cond = threading.Condition()
        self._detect_ticket = 0
        self._detect_busy = False
        self._methods = {
            "configure": self.configure,
            "detect": self.detect,
            "grab": self.grab,
            "fit_camera_model": self.fit_camera_model,
            "preview": self.preview,
            "version": self.version,
            "shutdown": self.shutdown,
            "sim_truth": self.sim_truth,
        }

    # -- dispatch

    @property
    def methods(self):
        """Names of the methods :meth:`call` accepts."""
        return sorted(self._methods)

    def call(self, method, params=None, received=None):
        """Run one protocol method.

        Parameters
        ----------
        method : str
        params : dict or None
        received : float, optional
            ``time.monotonic()`` when the request arrived (for ``settle``).

        Returns
        -------
        dict
            The method's ``result``.

        Raises
        ------
        HelperError
            With the protocol error code.
        """
        handler = self._methods.get(method)
        if handler is None:
            raise HelperError("unknown_method",
                              "Unknown method %r; the helper knows %s."
                              % (method, ", ".join(self.methods)),
                              {"method": method})
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise HelperError("invalid_request", "params must be an object.")
        if received is None:
            received = time.monotonic()
        if "machine" in params:
            self._apply_machine(params["machine"])
        return handler(params, received)

    def _log_event(self, level, message):
        """Log ``message`` here and send it to klippy.log as a log event."""
        getattr(log, level)(message)
        if self._emit_event is not None:
            self._emit_event({"event": "log", "level": level,
                              "message": message})

    # -- configure

    def configure(self, params, received):
        settings = Settings(params)
        with self._lock:
            old = self._settings
            self._settings = settings
            url_changed = old is None or old.camera_url != settings.camera_url
        if url_changed:
            self._close_camera()
        self._configure_preview(settings)
        status = self._preview_status()
        return {"camera_url": public_url(settings.camera_url),
                "preview": {"running": status["running"],
                            "url": status["url"],
                            "error": status["error"]}}

    # -- grab

    def grab(self, params, received):
        settings = self._require_settings()
        earliest = self._rule.earliest(params, received)
        timeout = number_param(params, "timeout", settings.camera_timeout,
                               low=0.1, high=60.0)
        save = params.get("save")
        if save is not None and (not isinstance(save, str) or not save.strip()):
            raise _bad("save", "must be a file path or null")
        camera = self._get_camera(settings,
                                  received + timeout - time.monotonic())
        remaining = received + timeout - time.monotonic()
        frame = self._fresh_frame(camera, earliest, earliest,
                                  max(0.05, remaining))
        self._publish(frame, status_lines=("grab",))
        saved = None
        if save:
            saved = self._save_image(os.path.expanduser(save.strip()),
                                     frame.image)
        return {"frame_size": list(frame.size), "frame_time": frame.timestamp,
                "age": frame.age(), "saved": saved}

    @staticmethod
    def _save_image(path, image):
        import cv2
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise _bad("save", "names a folder that does not exist (%s)"
                       % folder)
        try:
            ok = cv2.imwrite(path, image)
        except cv2.error as exc:
            raise _bad("save", "could not be written as an image (%s); use a "
                       ".jpg or .png name" % str(exc).strip().splitlines()[-1])
        if not ok:
            raise _bad("save", "could not be written to %s; check the name "
                       "(.jpg or .png) and permissions" % path)
        return os.path.abspath(path)

    # -- fit_camera_model

    def fit_camera_model(self, params, received):
        pairs = params.get("pairs")
        if not isinstance(pairs, list):
            raise _bad("pairs", "is required: a list of {\"xy\": [x, y], "
                       "\"uv\": [u, v]} objects")
        if len(pairs) < 3:
            raise _bad("pairs", "needs at least 3 calibration points (got %d)"
                       % len(pairs))
        xy, uv = [], []
        for index, pair in enumerate(pairs):
            if not isinstance(pair, dict):
                raise _bad("pairs[%d]" % index, "must be an object with xy "
                           "and uv")
            xy.append(point_param(pair.get("xy"), "pairs[%d].xy" % index))
            uv.append(point_param(pair.get("uv"), "pairs[%d].uv" % index))
        max_residual = number_param(params, "max_residual", 0.02, low=0.0,
                                    low_open=True, high=10.0)
        from ktamv_helper.camera_model import fit_camera_model
        result = fit_camera_model(xy, uv, max_residual)
        if "mm_per_px" in result and "rotation_deg" in result:
            self._note_for_preview(
                "scale", "scale %.4f mm/px, rotation %.1f deg"
                % (result["mm_per_px"],
                   round(result["rotation_deg"], 1) + 0.0))  # no "-0.0"
        return result

    # -- version

    def version(self, params, received):
        check_camera = bool_param(params, "check_camera", True)
        import cv2
        import numpy
        try:
            import skimage
            skimage_version = skimage.__version__
        except ImportError:
            skimage_version = None
        with self._lock:
            settings = self._settings
        camera = {"url": public_url(settings.camera_url) if settings else None,
                  "reachable": None, "frame_size": None, "error": None}
        if settings is None:
            camera["reachable"] = False
            camera["error"] = "not configured"
        elif check_camera:
            camera.update(self._check_camera(settings))
        return {"helper": __version__, "protocol": PROTOCOL_VERSION,
                "python": sys.version.split()[0], "opencv": cv2.__version__,
                "numpy": numpy.__version__, "skimage": skimage_version,
                "camera": camera, "preview": self._preview_status()}

    def _check_camera(self, settings):
        """One frame with a short timeout; never raises."""
        deadline = time.monotonic() + min(settings.camera_timeout,
                                          VERSION_CHECK_TIMEOUT)
        try:
            camera = self._get_camera(settings, deadline - time.monotonic())
            frame = camera.get_frame(
                timeout=max(0.05, deadline - time.monotonic()))
        except HelperError as exc:
            return {"reachable": False, "error": exc.message,
                    "error_code": exc.code}
        except Exception as exc:
            log.exception("camera check failed")
            return {"reachable": False, "error": "%s: %s"
                    % (type(exc).__name__, exc), "error_code": "internal_error"}
        return {"reachable": True, "frame_size": list(frame.size)}

    # -- simulation

    def sim_truth(self, params, received):
        settings = self._require_settings()
        camera = self._get_camera(settings)
        truth = getattr(camera, "truth", None)
        if truth is None:
            raise HelperError("invalid_request",
                              "sim_truth needs the simulated camera; the "
                              "camera_url %s is not sim://."
                              % public_url(settings.camera_url))
        return truth()

    # -- shutdown

    def shutdown(self, params=None, received=None):
        self.close()
        return {"ok": True}

    def close(self):
        """Stop the preview and the camera (each bounded by their close)."""
        with self._lock:
            self._closed = True
            preview, self._preview = self._preview, None
            self._annotating = False
            opening = self._opening
        if opening is not None and opening.thread is not None:
            # An HTTP probe still running: its socket timeout bounds it.
            opening.thread.join(CLOSE_JOIN)
        if preview is not None:
            try:
                preview.close()
            except Exception:
                log.exception("closing the preview server failed")
        self._close_camera()
