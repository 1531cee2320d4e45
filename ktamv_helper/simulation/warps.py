"""Known changes of a photo: geometry, exposure, light colour, blur, noise,
rescaling, JPEG.

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
    light : (float, float, float)
        B, G, R gains of the light, with the exposure: (1.0, 0.3, 0.08)
        relights the photo with a blue LED as a colour sensor sees one.
    blur_sigma, noise_sigma : float
        Gaussian defocus (px) and sensor noise (grey levels).
    rescale : float
        Final resize of the whole frame (0.5 halves it).
    jpeg_quality : int
        Encode the variant as JPEG at this quality and decode it, last, as
        an MJPEG camera does (0: not).
    crop : bool
        Cut the variant to the largest upright rectangle whose pixels all
        come from the photo: what lies beyond a photo's edge is unknown, and
        a mirrored border would show a bore that runs past the edge
        continuing as a mirrored dark disc no camera sees.
    """

    rotation_deg: float = 0.0
    zoom: float = 1.0
    shift: tuple = (0.0, 0.0)
    exposure: float = 1.0
    light: tuple = (1.0, 1.0, 1.0)
    blur_sigma: float = 0.0
    noise_sigma: float = 0.0
    rescale: float = 1.0
    jpeg_quality: int = 0
    crop: bool = False


def random_warp(rng, crop=False):
    """A mild variant, as the detection issue's benchmark defines them.

    Rotation ±6°, zoom ±3 %, shift ±10 %, exposure ×0.6–1.25, blur σ ≤ 1.6 px,
    noise σ 2–7, and a rescale by ×0.5 or ×2 in one variant of five;
    ``crop`` as in :class:`Warp`.
    """
    rescale = 1.0
    if rng.random() < 0.2:
        rescale = float(rng.choice([0.5, 2.0]))
    return Warp(rotation_deg=float(rng.uniform(-6, 6)), zoom=float(rng.uniform(0.97, 1.03)),
                shift=(float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1))),
                exposure=float(rng.uniform(0.6, 1.25)), blur_sigma=float(rng.uniform(0, 1.6)),
                noise_sigma=float(rng.uniform(2, 7)), rescale=rescale, crop=crop)


def _matrix(warp, shape):
    height, width = shape[:2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    m = cv2.getRotationMatrix2D(centre, warp.rotation_deg, warp.zoom)
    m[0, 2] += warp.shift[0] * width
    m[1, 2] += warp.shift[1] * height
    return m


def crop_box(warp, shape):
    """``(x0, y0, x1, y1)`` of the variant (before rescaling) that
    :func:`apply_warp` keeps: the whole frame, or with ``warp.crop`` the
    largest upright rectangle found by peeling off the border row or column
    with the most pixels from beyond the photo until none is left."""
    height, width = shape[:2]
    if not warp.crop:
        return 0, 0, width, height
    inside = cv2.warpAffine(np.ones((height, width), np.uint8), _matrix(warp, shape),
                            (width, height), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # One pixel more: interpolation near the photo's edge reads beyond it.
    outside = cv2.erode(inside, np.ones((3, 3), np.uint8), borderValue=0) == 0
    x0, y0, x1, y1 = 0, 0, width, height
    while x1 - x0 > 8 and y1 - y0 > 8:
        box = outside[y0:y1, x0:x1]
        sides = [box[0].sum(), box[-1].sum(), box[:, 0].sum(), box[:, -1].sum()]
        if max(sides) == 0:
            break
        side = int(np.argmax(sides))
        y0, y1, x0, x1 = (y0 + (side == 0), y1 - (side == 1),
                          x0 + (side == 2), x1 - (side == 3))
    return x0, y0, x1, y1


def warp_point(point, warp, shape):
    """Where ``point`` (u, v) of an image of ``shape`` lands in the variant."""
    m = _matrix(warp, shape)
    u, v = m @ np.array([point[0], point[1], 1.0])
    x0, y0, _, _ = crop_box(warp, shape)
    u, v = u - x0, v - y0
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
    if tuple(warp.light) != (1.0, 1.0, 1.0) and out.ndim == 3:
        out *= np.asarray(warp.light, np.float32)
    if warp.blur_sigma > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), warp.blur_sigma)
    if warp.noise_sigma > 0:
        out += rng.standard_normal(out.shape).astype(np.float32) * np.float32(warp.noise_sigma)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = crop_box(warp, image.shape)
    out = out[y0:y1, x0:x1]
    height, width = out.shape[:2]
    if warp.rescale != 1.0:
        size = (max(8, round(width * warp.rescale)), max(8, round(height * warp.rescale)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if warp.rescale < 1
                         else cv2.INTER_CUBIC)
    if warp.jpeg_quality:
        _, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(warp.jpeg_quality)])
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return out


def describe(warp):
    """A short label for tables."""
    light = "" if tuple(warp.light) == (1.0, 1.0, 1.0) else \
        " light BGR %.2g/%.2g/%.2g" % tuple(warp.light)
    return "rot %+.1f° zoom %.3f exp %.2f%s blur %.1f noise %.1f x%.1f%s" % (
        warp.rotation_deg, warp.zoom, warp.exposure, light, warp.blur_sigma,
        warp.noise_sigma, warp.rescale,
        " JPEG q%d" % warp.jpeg_quality if warp.jpeg_quality else "")

