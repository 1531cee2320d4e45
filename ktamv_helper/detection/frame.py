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
# Luma (ITU-R BT.601, as cv2.cvtColor weighs B, G, R) is the grey level
# unless the light is strongly coloured and luma left dim. Luma is the
# channel an MJPEG camera codes at full resolution (its colour is halved),
# so it is kept wherever it serves; but under a blue LED it weighs the one
# bright channel by 0.114, and a face of 255 in blue reads ~40 grey levels.
# The three real photos relit blue (B, G, R gains 1, 0.3, 0.08) were found
# in 34 of 90 variants in luma, which peaked at 41-88 there, and in 77 of
# 90 weighed by the light's colour; brighter, luma found rendered blue-lit
# nozzles as well as white-lit ones, and the weighed grey of a blue channel
# clipped at white measured their centres half as precisely (median 0.054
# against 0.027 px). The light's colour weighs in gradually, so the grey
# changes continuously with the frame (the two greys of one frame put its
# centre 0.03 px apart, median, and up to 0.18: a switch would make that a
# jump between frames): not at all where luma keeps MIN_LUMA_SHARE of the
# range the light's colour gives or its brightest parts (99.5th
# percentile) reach LUMA_DIM_TOP, half the scale; fully where luma keeps
# FULL_LIGHT_SHARE and stays under DIM_LEVEL, where a picture is dim.
MIN_LUMA_SHARE, FULL_LIGHT_SHARE = 0.75, 0.5
LUMA_DIM_TOP = 128
_LUMA_BGR = np.array([0.114, 0.587, 0.299])


def to_gray(image):
    """The grey levels of a BGR or grey uint8 image.

    Luma; where luma is dim under strongly coloured light, the channels
    weighed towards the light's colour (:func:`grey_weights`), so the tip
    face spans the levels the camera gives it whatever the colour of its
    LEDs.

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
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"expected a BGR or grey image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    dim = _ramp(_top_level(gray), LUMA_DIM_TOP, DIM_LEVEL)
    weights = grey_weights(image, dim) if dim > 0.0 else None
    if weights is not None:
        gray = cv2.transform(image, weights[None, :].astype(np.float32))
    return gray


def light_weights(image):
    """The colour of a frame's light as channel weights, and the share of
    its range luma keeps.

    What the camera sees is metal lit by the LEDs, so the frame's mean
    colour is the light's colour as the metal returns it, and the bright
    face and the dark bore differ along it. Weighing each channel by its
    share of that colour is the matched filter for such a difference (the
    most contrast over noise any fixed weighing gives, where the channels'
    noise is alike), and a weighted mean, so grey stays grey and nothing
    clips that did not.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3)
        BGR frame.

    Returns
    -------
    (ndarray of float, shape (3,), float) or None
        B, G, R weights summing to 1, and what luma keeps of the range
        they give (1 for grey light); None for a black frame.
    """
    colour = np.asarray(cv2.mean(image)[:3], float)
    total = float(colour.sum())
    if total <= 0.0:
        return None
    weights = colour / total
    # A pixel of the light's colour reads luma . colour in luma and
    # weights . colour weighed.
    return weights, float(_LUMA_BGR @ colour) / float(weights @ colour)


def grey_weights(image, dim=1.0):
    """B, G, R weights of a colour frame's grey level: luma's, moved
    towards the light's colour (:func:`light_weights`) as far as the light
    is coloured and, by ``dim`` (0..1), luma is dim; None for luma alone.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3)
    dim : float
        0 where luma is bright enough, 1 where it is dim (see
        ``LUMA_DIM_TOP``).

    Returns
    -------
    ndarray of float, shape (3,) or None
    """
    light = light_weights(image)
    if light is None:
        return None
    weights, share = light
    t = dim * _ramp(share, MIN_LUMA_SHARE, FULL_LIGHT_SHARE)
    return None if t <= 0.0 else (1.0 - t) * _LUMA_BGR + t * weights


def _ramp(value, none_at, full_at):
    """0 at ``none_at``, 1 at ``full_at``, linear between, clipped."""
    return float(np.clip((value - none_at) / (full_at - none_at), 0.0, 1.0))


def _top_level(gray):
    """99.5th percentile of a grey frame's levels, from every fourth pixel
    of every fourth row of a big frame (the whole histogram of a 1080p
    frame costs 1.5 ms, as much as the rest of this module)."""
    if min(gray.shape) >= 64:
        gray = cv2.resize(gray, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_NEAREST)
    return histogram_levels(gray, (0.995,))[0]


def histogram_levels(gray, fractions):
    """The grey levels below which ``fractions`` of a frame's pixels lie
    (its percentiles, read off one histogram: ``np.percentile`` sorts).

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    fractions : sequence of float
        Each 0..1.

    Returns
    -------
    list of int
    """
    hist = np.cumsum(cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel())
    return [int(np.searchsorted(hist, f * hist[-1])) for f in fractions]


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
