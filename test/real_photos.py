"""Real photographs without a nozzle, shipped inside scikit-image.

Only images that load offline are used (some of ``skimage.data`` needs
pooch and the network). Each photo is given as the camera would: BGR uint8,
and also cropped and rescaled to the frame sizes nozzle cameras deliver.
"""

import cv2
import numpy as np

# Photographs (and two microscope images) bundled with scikit-image.
PHOTOS = ["astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock",
          "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
          "rocket", "stereo_motorcycle", "text"]
# Frame sizes of USB microscopes and endoscopes.
CAMERA_SIZES = [(320, 240), (640, 480), (1920, 1080)]


def as_bgr(image):
    """A scikit-image picture (RGB, RGBA, grey or bool) as BGR uint8."""
    if isinstance(image, tuple):        # stereo pairs
        image = image[0]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def fill_frame(image, size):
    """Scale ``image`` to cover ``size`` = (width, height) and crop the middle."""
    height, width = image.shape[:2]
    scale = max(size[0] / width, size[1] / height)
    scaled = cv2.resize(image, (max(size[0], round(width * scale)),
                                max(size[1], round(height * scale))),
                        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y0 = (scaled.shape[0] - size[1]) // 2
    x0 = (scaled.shape[1] - size[0]) // 2
    return scaled[y0:y0 + size[1], x0:x0 + size[0]]


def load(name):
    """One photo by ``skimage.data`` name, BGR uint8; None if it needs a download."""
    import skimage.data
    try:
        return as_bgr(getattr(skimage.data, name)())
    except (ImportError, OSError, ValueError):      # pooch missing, no network
        return None


def frames():
    """``(label, image)`` for every offline photo: as shipped and at each camera size."""
    for name in PHOTOS:
        image = load(name)
        if image is None:
            continue
        yield name, image
        for size in CAMERA_SIZES:
            yield "%s@%dx%d" % (name, size[0], size[1]), fill_frame(image, size)
