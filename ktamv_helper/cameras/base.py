"""What every camera source delivers: time-stamped BGR frames."""

import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class Frame:
    """One camera frame.

    Attributes
    ----------
    image : ndarray of uint8, shape (H, W, 3)
        BGR pixels, as OpenCV decodes them.
    timestamp : float
        ``time.monotonic()`` when the frame's last byte arrived.
    captured : float or None
        The camera's own capture stamp, converted to ``time.monotonic()``
        (V4L2 buffer time, an ``X-Timestamp`` header), when it sent one.
        ``ktamv_helper.freshness`` judges frames by it.
    """

    image: np.ndarray
    timestamp: float
    captured: float = None

    @property
    def size(self):
        """``(width, height)`` in pixels."""
        return (int(self.image.shape[1]), int(self.image.shape[0]))

    def age(self, now=None):
        """Seconds since the frame arrived."""
        return (time.monotonic() if now is None else now) - self.timestamp


class CameraSource:
    """Base class of camera sources.

    A source is created by ``ktamv_helper.cameras.open_camera(url, timeout)``
    and must be safe to call from several threads at once.
    """

    url = ""

    def get_frame(self, not_before=None, timeout=5.0):
        """Return the next :class:`Frame` that arrived at or after ``not_before``.

        ``not_before`` is only an arrival cursor (never a frame twice);
        whether a frame is fresh enough is ``freshness.FrameRule``'s call.

        Raises
        ------
        ktamv_helper.errors.HelperError
            ``camera_unreachable``, ``camera_timeout``, ``camera_http_error``
            or ``camera_bad_frame`` with a sentence saying what to check.
        """
        raise NotImplementedError

    def set_machine_state(self, position, tool, moves=()):
        """Hear the commanded toolhead position, active tool and moves since.

        Real cameras ignore it; the simulated camera renders from it
        (``moves``: positions passed through since the previous request).
        """

    def close(self):
        """Stop reader threads and release the device or connection."""
