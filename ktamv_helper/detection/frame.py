"""Grey levels and noise of a camera frame."""

import math

import cv2
import numpy as np

# Noise is estimated on a central window of at most this size (px).
NOISE_WINDOW = (640, 480)
# A picture whose grey levels span less than this is blank: no edge in it
# is worth a look (the candidate search skips such a frame too).
BLANK_RANGE = 12.0
# A picture whose brightest parts (99.5th percentile) stay below this is
# too dark: a nozzle's tip face is the brightest thing in a lit view, and
# below ~40 levels its rise over the bore is within a few noise levels.
DARK_LEVEL = 40
# Below this (a quarter of full scale) the picture is dim: the face's rise
# over the bore is then at most ~50 levels, a dozen noise levels of a USB
# camera, where a small soft bore no longer stands out: the three real
# photos darkened until their brightest parts reached 42-47 were missed in
# 57 of 60 variants, at 62-68 found in 56 of 60. Only said of a frame in
# which no bore was found: a dim frame whose bore is plain is measured.
DIM_LEVEL = 64
# A picture with more than this fraction clipped at white (>= 250, JPEG
# rings a little below 255) shows the face and the body as one white area.
CLIPPED_FRACTION = 0.5
# ... or with more than this fraction of its lit part (pixels at least half
# way from the dark floor to white) clipped: then more of the face and body
# is flat white than not, and their edges are lost, though the dark cone
# and background keep the clipped share of the whole picture low (a real
# endoscope frame at 3x exposure: 44 % of the picture, 58 % of its lit
# part; a clipped tip face on an unclipped body is a small share of it).
CLIPPED_OF_LIT = 0.5


def to_gray(image):
    """The grey levels of a BGR or grey uint8 image.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W), (H, W, 1) or (H, W, 3)

    Returns
    -------
    ndarray of uint8, shape (H, W)

    Raises
    ------
    ValueError
        For other shapes or pixel types.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        gray = image[:, :, 0]
    elif image.ndim == 2:
        gray = image
    else:
        raise ValueError(f"expected a BGR or grey image, got shape {image.shape}")
    if gray.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {gray.dtype}")
    return gray


def estimate_noise(gray):
    """Standard deviation of the pixel noise, grey levels.

    Immerkær's estimator (1996): the mean absolute response to a 3x3 mask
    that cancels constant and linear shading. Edges add to it a little, which
    only makes the detector's thresholds more cautious.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)

    Returns
    -------
    float
        At least 0.5 (8-bit quantisation).
    """
    if min(gray.shape) < 3:
        return 0.5
    # A central window is plenty and keeps big frames cheap.
    height, width = gray.shape
    y0, x0 = max(0, (height - NOISE_WINDOW[1]) // 2), max(0, (width - NOISE_WINDOW[0]) // 2)
    gray = gray[y0:y0 + NOISE_WINDOW[1], x0:x0 + NOISE_WINDOW[0]]
    response = cv2.filter2D(gray.astype(np.float32), -1, _NOISE_MASK,
                            borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    sigma = math.sqrt(math.pi / 2.0) * float(cv2.mean(np.abs(response))[0]) / 6.0
    return max(0.5, sigma)


_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def exposure_problem(gray):
    """A sentence naming what is wrong with a picture's exposure, or None.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)

    Returns
    -------
    str or None
        For a blank, very dark or dim picture, or one mostly clipped (or
        whose lit part is): what it is and what to do.
    """
    if gray.size == 0:
        return None
    sample = gray[::2, ::2] if min(gray.shape) >= 16 else gray
    lo, hi, top = np.percentile(sample, [1, 99.9, 99.5])
    clipped = float(np.mean(sample >= 250))
    if clipped > CLIPPED_FRACTION:
        return ("%d %% of the picture is clipped at white: lower the camera's "
                "exposure or gain, or the light." % round(100 * clipped))
    lit = sample[sample >= 0.5 * (lo + 255.0)]
    clipped_of_lit = float(np.mean(lit >= 250)) if lit.size else 0.0
    if clipped_of_lit > CLIPPED_OF_LIT:
        return ("%d %% of the picture's lit part is clipped at white: if the "
                "nozzle's tip face and body merge there, lower the camera's "
                "exposure or gain, or the light." % round(100 * clipped_of_lit))
    if top < DARK_LEVEL:
        return ("The picture is very dark (its brightest parts reach %d of "
                "255): raise the camera's exposure or gain, or the light."
                % int(top))
    if hi - lo < BLANK_RANGE:
        return ("The picture is blank (every pixel between %d and %d of 255): "
                "is the lens covered, or the stream showing a placeholder?"
                % (int(lo), int(hi)))
    if top < DIM_LEVEL:
        return ("The picture is dim (its brightest parts reach %d of 255): if "
                "the nozzle is in view, raise the camera's exposure or gain, or "
                "the light." % int(top))
    return None
