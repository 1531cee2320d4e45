"""Baseline for the benchmark: TAMV's published blob-detector cascade.

A re-implementation, from the description in issue 2, of how TAMV finds a
nozzle: ``cv2.SimpleBlobDetector`` (threshold levels 1-50 in steps of 1) with
a standard and a relaxed set of filters, each tried on two preprocessed
versions of the frame, resized to 640x480; the first combination that finds
exactly one blob wins. Used only to compare against ``detection.py``.
"""

import cv2
import numpy as np

WORK_SIZE = (640, 480)


def _params(min_area, max_area, min_circularity, min_convexity, min_inertia):
    params = cv2.SimpleBlobDetector_Params()
    params.minThreshold = 1
    params.maxThreshold = 50
    params.thresholdStep = 1
    params.filterByArea = True
    params.minArea = min_area
    params.maxArea = max_area
    params.filterByCircularity = True
    params.minCircularity = min_circularity
    params.maxCircularity = 1.0
    params.filterByConvexity = True
    params.minConvexity = min_convexity
    params.maxConvexity = 1.0
    params.filterByInertia = True
    params.minInertiaRatio = min_inertia
    return params


def _gamma(image, gamma=1.2):
    table = (((np.arange(256) / 255.0) ** (1.0 / gamma)) * 255.0).astype(np.uint8)
    return cv2.LUT(image, table)


def _preprocess_yuv_adaptive(image):
    """Gamma 1.2 -> Y of YUV -> Gaussian blur -> adaptive Gaussian threshold."""
    y = cv2.cvtColor(_gamma(image), cv2.COLOR_BGR2YUV)[:, :, 0]
    y = cv2.GaussianBlur(y, (7, 7), 0)
    return cv2.adaptiveThreshold(y, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C,
                                 cv2.THRESH_BINARY, 35, 1)


def _preprocess_triangle(image):
    """Gamma 1.2 -> grey -> triangle threshold -> 7x7 Gaussian blur."""
    gray = cv2.cvtColor(_gamma(image), cv2.COLOR_BGR2GRAY)
    _, binary = cv2.threshold(gray, 127, 255, cv2.THRESH_BINARY | cv2.THRESH_TRIANGLE)
    return cv2.GaussianBlur(binary, (7, 7), 6)


class TamvCascade:
    """TAMV's detector cascade; ``detect(image)`` -> ``(u, v)`` or None."""

    def __init__(self):
        self.detectors = [
            cv2.SimpleBlobDetector_create(_params(400, 900, 0.8, 0.3, 0.3)),
            cv2.SimpleBlobDetector_create(_params(600, 15000, 0.6, 0.1, 0.3)),
        ]
        self.preprocessors = [_preprocess_yuv_adaptive, _preprocess_triangle]

    def detect(self, image):
        """Bore centre in the frame's own pixels, or None."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        height, width = image.shape[:2]
        small = cv2.resize(image, WORK_SIZE, interpolation=cv2.INTER_AREA) \
            if (width, height) != WORK_SIZE else image
        sx, sy = width / WORK_SIZE[0], height / WORK_SIZE[1]
        for detector in self.detectors:
            for preprocess in self.preprocessors:
                keypoints = detector.detect(preprocess(small))
                if len(keypoints) == 1:
                    u, v = keypoints[0].pt
                    return ((u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5)
        return None
