"""The one rule that decides whether a frame may be used (docs/protocol.md).

A frame counts only if it was *captured* after the move ended plus
``settle``. The capture time is the camera's own stamp where it has one
(V4L2 buffer timestamps, ``X-Timestamp`` headers of camera-streamer and
ustreamer), converted to this process's ``time.monotonic()``; otherwise it is
the arrival stamp minus the camera's frame latency, measured once per session
(:meth:`FrameRule.note_latency`) and 0 until then.

Cameras only deliver frames in arrival order (``get_frame(not_before)`` is an
arrival cursor); :class:`FrameRule` alone judges them.
"""

import hashlib
import math
import threading
import time

from ktamv_helper.errors import HelperError

# Camera stamps further than this from both clocks are not trusted.
MAX_CLOCK_SKEW = 60.0
# Most frame latency believed (a slower camera is not a nozzle camera).
MAX_LATENCY = 2.0


def camera_stamp_to_monotonic(stamp, arrival):
    """A camera's capture stamp (monotonic or wall-clock seconds) as a
    ``time.monotonic()`` value, or ``None`` when it fits neither clock."""
    try:
        stamp = float(stamp)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(stamp) or stamp <= 0:
        return None
    now_mono, now_wall = time.monotonic(), time.time()
    if abs(now_mono - stamp) < MAX_CLOCK_SKEW:
        captured = stamp
    elif abs(now_wall - stamp) < MAX_CLOCK_SKEW:
        captured = stamp - now_wall + now_mono
    else:
        return None
    # A capture after arrival or long before it is a broken clock.
    if captured > arrival + 0.01 or arrival - captured > MAX_LATENCY:
        return None
    return captured


def frame_digest(image):
    """A short digest of a frame's pixels: equal digests, equal pictures."""
    return hashlib.blake2b(memoryview(image).cast("B"),
                           digest_size=8).hexdigest()


def just_after(stamp):
    """The next representable stamp, so a frame is never used twice."""
    if hasattr(math, "nextafter"):  # Python 3.9+
        return math.nextafter(stamp, math.inf)
    return stamp + 1e-9


class FrameRule:
    """Freshness of frames for one helper session (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._latency = None

    @property
    def latency(self):
        """Measured arrival latency (s), or ``None`` before a measurement."""
        with self._lock:
            return self._latency

    def note_latency(self, seconds):
        """Record the latency measured once per session (the first wins)."""
        seconds = min(MAX_LATENCY, max(0.0, float(seconds)))
        with self._lock:
            if self._latency is None:
                self._latency = seconds
        return self.latency

    def earliest(self, params, received):
        """The capture time a request's frames must reach, or ``None``.

        ``moved_at`` (helper clock) is when the move ended; without it the
        request's arrival stands in (a remote helper's clock differs).
        ``not_before`` is an absolute bound; with both the later one wins.
        """
        from ktamv_helper.service import number_param
        not_before = number_param(params, "not_before", None)
        settle = number_param(params, "settle", 0.0, low=0.0, high=600.0)
        moved_at = number_param(params, "moved_at", None)
        if moved_at is not None and moved_at > received + 1.0:
            raise HelperError("invalid_params", "Parameter 'moved_at' is %.1f"
                              " s in the future: the extra and the helper do"
                              " not share a clock; send settle alone."
                              % (moved_at - received), {"param": "moved_at"})
        if moved_at is not None or settle > 0:
            base = received if moved_at is None else moved_at
            bound = base + settle
            not_before = bound if not_before is None else max(not_before,
                                                             bound)
        return not_before

    def captured(self, frame):
        """When ``frame`` was captured, on this process's monotonic clock."""
        if frame.captured is not None:
            return frame.captured
        return frame.timestamp - (self.latency or 0.0)

    def accepts(self, frame, earliest):
        """True when ``frame`` may be used for a request bound by ``earliest``."""
        return earliest is None or self.captured(frame) >= earliest
