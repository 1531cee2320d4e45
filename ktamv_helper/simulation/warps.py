"""Known changes of a photo: geometry, exposure, blur, noise, rescaling.

A real photo's bore centre is known only roughly, but after a *known* warp
the warped centre is known exactly relative to the original: the detector's
answer on the warped photo, mapped back, must agree with its answer on the
original. That measures consistency on real appearance without ground truth.
"""

import dataclasses
import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Warp:
    """One variant of a photo.

    Attributes
    ----------
    rotation_deg, zoom : float
        Rotation and scale about the image centre.
    shift : (float, float)
        Translation, as fractions of the width and height.
    exposure : float
        Brightness factor (values over 255 clip, as a sensor does).
    blur_sigma, noise_sigma : float
        Gaussian defocus (px) and sensor noise (grey levels).
    rescale : float
        Final resize of the whole frame (0.5 halves it).
    """

    rotation_deg: float = 0.0
    zoom: float = 1.0
    shift: tuple = (0.0, 0.0)
    exposure: float = 1.0
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    rescale: float = 1.0


def random_warp(rng):
    """A mild variant, as the detection issue's benchmark defines them.

    Rotation ±6°, zoom ±3 %, shift ±10 %, exposure ×0.6–1.25, blur σ ≤ 1.6 px,
    noise σ 2–7, and a rescale by ×0.5 or ×2 in one variant of five.
    """
    rescale = 1.0
    if rng.random() < 0.2:
        rescale = float(rng.choice([0.5, 2.0]))
    return Warp(rotation_deg=float(rng.uniform(-6, 6)), zoom=float(rng.uniform(0.97, 1.03)),
                shift=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))),
                exposure=float(rng.uniform(0.6, 1.25)), blur_sigma=float(rng.uniform(0, 1.6)),
                noise_sigma=float(rng.uniform(2, 7)), rescale=rescale)


def _matrix(warp, shape):
    height, width = shape[:2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    m = cv2.getRotationMatrix2D(centre, warp.rotation_deg, warp.zoom)
    m[0, 2] += warp.shift[0] * width
    m[1, 2] += warp.shift[1] * height
    return m


def warp_point(point, warp, shape):
    """Where ``point`` (u, v) of an image of ``shape`` lands in the variant."""
    m = _matrix(warp, shape)
    u, v = m @ np.array([point[0], point[1], 1.0])
    # Resizing maps pixel centres: (u + 0.5) * s - 0.5.
    return ((u + 0.5) * warp.rescale - 0.5, (v + 0.5) * warp.rescale - 0.5)


def warp_radius(radius, warp):
    """A length of the original as it measures in the variant."""
    return radius * warp.zoom * warp.rescale


def apply_warp(image, warp, rng):
    """The variant of ``image`` (BGR uint8); ``rng`` draws the noise."""
    height, width = image.shape[:2]
    out = cv2.warpAffine(image, _matrix(warp, image.shape), (width, height),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * np.float32(warp.exposure)
    if warp.blur_sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), warp.blur_sigma)
    if warp.noise_sigma > 0:
        out += rng.standard_normal(out.shape).astype(np.float32) * np.float32(warp.noise_sigma)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if warp.rescale != 1.0:
        size = (max(8, round(width * warp.rescale)), max(8, round(height * warp.rescale)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if warp.rescale < 1
                         else cv2.INTER_CUBIC)
    return out


def describe(warp):
    """A short label for tables."""
    return "rot %+.1f° zoom %.3f exp %.2f blur %.1f noise %.1f x%.1f" % (
        warp.rotation_deg, warp.zoom, warp.exposure, warp.blur_sigma, warp.noise_sigma,
        warp.rescale)

