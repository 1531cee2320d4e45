"""V4L2 camera (``/dev/videoN`` or ``N``) through OpenCV's VideoCapture.

A reader thread grabs frames continuously (so the driver's queue never holds
stale ones), stamps each with ``time.monotonic()`` and keeps the newest. A
device that stops delivering is reopened with backoff.
"""

import logging
import os
import threading
import time

from ktamv_helper.cameras import as_bgr
from ktamv_helper.cameras.base import CameraSource, Frame
from ktamv_helper.errors import HelperError
from ktamv_helper.freshness import camera_stamp_to_monotonic

log = logging.getLogger("ktamv_helper.cameras.v4l2")

MIN_BACKOFF = 0.5
MAX_BACKOFF = 5.0
# Failed reads in a row before the device is closed and reopened.
MAX_FAILED_READS = 10
# A stored frame older than this is not "a frame" for get_frame(None).
STALE_AFTER = 0.5


def device_path(url):
    """``(device, path)``: the VideoCapture argument and the device file."""
    text = url.strip()
    if text.isdigit():
        return int(text), "/dev/video%d" % int(text)
    return text, text


class V4l2Camera(CameraSource):
    """Frames from a local video device.

    Raises
    ------
    HelperError
        ``camera_unreachable`` at once when the device does not exist or
        OpenCV cannot open it.
    """

    def __init__(self, url, timeout=5.0):
        self.url = url.strip()
        self.timeout = timeout
        self._device, self._path = device_path(url)
        if not os.path.exists(self._path):
            raise HelperError("camera_unreachable",
                              "There is no video device %s: check that the "
                              "camera is plugged in (ls /dev/video*) and "
                              "nozzle_cam_url." % self._path)
        capture = self._open_capture()
        self._cond = threading.Condition()
        self._frame = None
        self._error = None
        self._closed = False
        self._waiting = 0           # get_frame calls waiting for a frame
        self._thread = threading.Thread(target=self._run, args=(capture,),
                                        name="ktamv-v4l2-reader", daemon=True)
        self._thread.start()

    def _open_capture(self):
        import cv2
        capture = cv2.VideoCapture(self._device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise HelperError("camera_unreachable",
                              "OpenCV cannot open the video device %s: is it "
                              "a capture device, and is another program (a "
                              "webcam streamer) holding it?" % self._path)
        # Keep the driver's queue short so frames are fresh.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return capture

    def _run(self, capture):
        import cv2
        backoff = MIN_BACKOFF
        failed = 0
        while not self._closed:
            if capture is None:
                try:
                    capture = self._open_capture()
                except HelperError as exc:
                    self._set_error(exc)
                    with self._cond:
                        if self._cond.wait_for(lambda: self._closed, backoff):
                            break
                    backoff = min(MAX_BACKOFF, backoff * 2)
                    continue
            # grab() dequeues a frame without converting it, keeping the
            # driver's queue fresh at little cost; the frame is only decoded
            # (retrieve) while a request is waiting for one.
            ok = capture.grab()
            stamp = time.monotonic()
            image = captured = None
            if ok:
                with self._cond:
                    wanted = self._waiting > 0
                if not wanted:
                    failed = 0
                    continue
                ok, image = capture.retrieve()
                # The driver's buffer timestamp (ms): when the sensor
                # captured it, which the freshness rule prefers.
                captured = camera_stamp_to_monotonic(
                    capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, stamp)
            if not ok or image is None:
                failed += 1
                if failed >= MAX_FAILED_READS:
                    self._set_error(HelperError(
                        "camera_unreachable", "The video device %s stopped "
                        "delivering frames; reopening it." % self._path))
                    capture.release()
                    capture = None
                    failed = 0
                else:
                    time.sleep(0.05)
                continue
            failed = 0
            backoff = MIN_BACKOFF
            try:
                frame = Frame(as_bgr(image, self.url), stamp, captured)
            except HelperError as exc:
                self._set_error(exc)
                continue
            with self._cond:
                self._frame = frame
                self._error = None
                self._cond.notify_all()
        if capture is not None:
            capture.release()

    def _set_error(self, error):
        log.warning("%s", error.message)
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def get_frame(self, not_before=None, timeout=5.0):
        now = time.monotonic()
        deadline = now + timeout
        if not_before is None:
            # Idle frames are not decoded, so the stored one may be old:
            # "any frame" means one from about now.
            not_before = now - STALE_AFTER
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise HelperError("camera_unreachable",
                                          "The camera %s was closed."
                                          % self.url)
                    frame = self._frame
                    if frame is not None and frame.timestamp >= not_before:
                        return frame
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout_error(timeout)
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def _timeout_error(self, timeout):
        if self._error is not None:
            return HelperError(self._error.code, self._error.message
                               + " No frame within %.1f s." % timeout)
        return HelperError("camera_timeout",
                           "No fresh frame from %s within %.1f s."
                           % (self.url, timeout))

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        # The reader releases the device itself; a read stuck in the driver
        # must not hold up shutdown.
        self._thread.join(0.5)
