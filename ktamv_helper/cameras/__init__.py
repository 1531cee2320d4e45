"""Camera sources: pick one from the ``camera_url`` and open it.

| URL                          | source                                      |
| ---------------------------- | ------------------------------------------- |
| ``http://…``, ``https://…``  | snapshot or MJPEG stream (``http.py``)      |
| ``/dev/videoN``, ``N``       | V4L2 device through OpenCV (``v4l2.py``)    |
| ``file:/path``               | an image or a folder of images (``files.py``)|
| ``sim://?key=value``         | the simulated nozzle camera (``sim.py``)    |

Nothing heavy is imported here: the source modules (and OpenCV) load only
when a camera is opened, so the helper starts quickly.
"""

from ktamv_helper.errors import HelperError

SUPPORTED_FORMS = ("http://…, https://…, /dev/videoN, a device number N, "
                   "file:/path/to/image-or-folder or sim://")


def camera_kind(url):
    """Classify a camera URL without opening it.

    Parameters
    ----------
    url : str
        The configured ``camera_url``.

    Returns
    -------
    str
        ``"http"``, ``"v4l2"``, ``"file"`` or ``"sim"``.

    Raises
    ------
    HelperError
        ``invalid_params`` when the URL has none of the supported forms.
    """
    if not isinstance(url, str) or not url.strip():
        raise HelperError("invalid_params",
                          "camera_url is empty; use one of: %s." % SUPPORTED_FORMS)
    text = url.strip()
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        return "http"
    if lower.startswith("file:"):
        return "file"
    if lower.startswith("sim:"):
        return "sim"
    if text.isdigit() or text.startswith("/dev/"):
        return "v4l2"
    raise HelperError(
        "invalid_params",
        "camera_url %r is not a camera this helper can open; use one of: %s."
        % (text, SUPPORTED_FORMS))


def public_url(url):
    """``url`` with any password replaced by ``***``, for messages and logs."""
    if not isinstance(url, str) or "@" not in url:
        return url
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit((parts.scheme, "%s:***@%s" % (user, netloc[1]),
                                    parts.path, parts.query, parts.fragment))


def open_camera(url, timeout=5.0):
    """Open the camera source a URL names.

    Parameters
    ----------
    url : str
        See :func:`camera_kind`.
    timeout : float
        Seconds to wait for the camera while opening it (HTTP probe).

    Returns
    -------
    ktamv_helper.cameras.base.CameraSource

    Raises
    ------
    HelperError
        ``invalid_params`` for an unsupported URL, or a ``camera_*`` error
        when the camera cannot be reached.
    """
    kind = camera_kind(url)
    url = url.strip()
    if kind == "http":
        from ktamv_helper.cameras import http
        return http.open_http_camera(url, timeout)
    if kind == "file":
        from ktamv_helper.cameras import files
        return files.FileCamera(url)
    if kind == "v4l2":
        from ktamv_helper.cameras import v4l2
        return v4l2.V4l2Camera(url, timeout)
    try:
        from ktamv_helper.cameras import sim
    except ImportError as exc:
        raise HelperError("camera_unreachable",
                          "The simulated camera is not available in this "
                          "helper (%s)." % exc)
    return sim.SimCamera(url)


# Frames outside these bounds are not a nozzle camera's picture: a zero-size
# image, or a header claiming gigapixels that would exhaust a Raspberry Pi.
MIN_SIDE = 16
MAX_SIDE = 10000
MAX_PIXELS = 40_000_000


def check_frame_size(width, height, url):
    """Refuse zero-size and absurd frame dimensions.

    Raises
    ------
    HelperError
        ``camera_bad_frame`` naming the size and the camera URL.
    """
    if (width < MIN_SIDE or height < MIN_SIDE or width > MAX_SIDE
            or height > MAX_SIDE or width * height > MAX_PIXELS):
        raise HelperError(
            "camera_bad_frame",
            "The camera at %s sent a %dx%d frame, which is not a usable "
            "picture (expected %d to %d pixels a side): check the camera's "
            "resolution setting." % (url, width, height, MIN_SIDE, MAX_SIDE),
            {"frame_size": [int(width), int(height)]})


def as_bgr(image, url):
    """Return a decoded image as 3-channel BGR ``uint8``, checking its size.

    Grey and BGRA images (PNG files, some cameras) are converted; anything
    else is refused with ``camera_bad_frame``.
    """
    import numpy as np
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent a frame that could not be "
                          "decoded as an image." % url)
    check_frame_size(image.shape[1], image.shape[0], url)
    if image.dtype != np.uint8:
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent %s pixels; 8-bit images are "
                          "needed." % (url, image.dtype))
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    import cv2
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    raise HelperError("camera_bad_frame",
                      "The camera at %s sent an image with shape %s, which is "
                      "not a colour or grey picture." % (url, image.shape))
