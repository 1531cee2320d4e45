"""``file:`` camera: one image, or the images of a folder in name order.

For offline use and tests. Every ``get_frame`` returns the next image (the
folder repeats) as a new :class:`Frame` stamped with ``time.monotonic()``.
"""

import os
import threading
import time
import urllib.parse

from ktamv_helper.cameras import as_bgr
from ktamv_helper.cameras.base import CameraSource, Frame
from ktamv_helper.errors import HelperError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff",
                    ".webp", ".pgm", ".ppm")


def path_from_url(url):
    """Turn ``file:/p``, ``file:///p`` or ``file:relative/p`` into a path."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc and parsed.netloc != "localhost":
        # file://name/x is a common slip for file:///name/x or file:name/x.
        path = "/" + parsed.netloc + parsed.path
        if not os.path.exists(path):
            path = parsed.netloc + parsed.path
    else:
        path = parsed.path
    return urllib.parse.unquote(path)


def list_images(path):
    """Image files to cycle through: ``[path]`` or a folder's images sorted."""
    if os.path.isdir(path):
        names = sorted(name for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_EXTENSIONS))
        return [os.path.join(path, name) for name in names]
    return [path]


class FileCamera(CameraSource):
    """Frames read from image files.

    Parameters
    ----------
    url : str
        ``file:`` followed by an image or folder path.

    Raises
    ------
    HelperError
        ``camera_unreachable`` when the path does not exist or the folder
        holds no images.
    """

    def __init__(self, url):
        self.url = url
        self.path = path_from_url(url)
        if not os.path.exists(self.path):
            raise HelperError("camera_unreachable",
                              "There is no file or folder at %s (from "
                              "camera_url %s)." % (self.path, url))
        self._files = list_images(self.path)
        if not self._files:
            raise HelperError("camera_unreachable",
                              "The folder %s holds no images (%s)."
                              % (self.path, ", ".join(IMAGE_EXTENSIONS)))
        self._lock = threading.Lock()
        self._next = 0
        self._closed = False

    def get_frame(self, not_before=None, timeout=5.0):
        # A frame is stamped when it is read, so a future not_before only
        # means waiting until then.
        wait = 0.0 if not_before is None else not_before - time.monotonic()
        if wait > timeout:
            time.sleep(max(0.0, timeout))
            raise HelperError("camera_timeout",
                              "No frame from %s stamped after the requested "
                              "time arrived within %.1f s." % (self.url, timeout))
        while not_before is not None and time.monotonic() < not_before:
            time.sleep(max(0.0, not_before - time.monotonic()))
        with self._lock:
            if self._closed:
                raise HelperError("camera_unreachable",
                                  "The camera %s was closed." % self.url)
            name = self._files[self._next % len(self._files)]
            self._next += 1
        import cv2
        image = cv2.imread(name, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise HelperError("camera_bad_frame",
                              "%s is not an image OpenCV can read." % name)
        image = as_bgr(image, self.url)
        return Frame(image, time.monotonic())

    def close(self):
        with self._lock:
            self._closed = True
