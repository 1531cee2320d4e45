"""Photo-like frames of a nozzle seen from below, independent of render.py.

Written from how the picture forms in a real upward-looking USB microscope
or endoscope, not from the project's own renderer, so the detector can be
checked on looks it was not developed on:

* **Scene, in linear light.** A ring light around the lens lights the tip.
  The flat, lathe-turned tip face mirrors the ring back into the lens:
  bright, with faint concentric turning grooves, the LEDs' reflections as
  dots or a continuous ring, scratches and burnt brown residue. A thin
  chamfer darkens the rim of the bore; the bore is dark but may hold a
  glint on the filament inside or coloured ooze spilling over the rim. The
  conical flanks send the ring light away from the lens, so they are darker
  and lit from one side. The hex body and the heater block or silicone sock
  behind are millimetres farther away than the tip face, so they are drawn
  on a separate layer and defocused much more.
* **Geometry.** A slightly tilted camera sees every circle of the tip as an
  ellipse (weak perspective: an affine map, which keeps the bore centre at
  the ellipse centre). Edges are anti-aliased analytically: each pixel is
  covered by the signed distance to the edge, in pixels, plus one half.
* **Camera.** Vignetting and uneven light, auto-exposure that may blow the
  tip face out, a pillbox (not Gaussian) defocus blur, shot and read noise
  on an RGGB Bayer mosaic, white balance, gamma, 8-bit quantisation,
  OpenCV demosaicing (colour fringes at edges), in-camera sharpening halos,
  an optional cheap sensor upscaled to the output size, and JPEG.

``random_scene(rng, size)`` draws the parameters; ``render(scene)`` returns
``(image_bgr_uint8, truth)`` where ``truth`` is the bore centre in the
output frame's pixels, OpenCV convention (centre of pixel (0, 0) = (0, 0)),
or None for a frame without a nozzle.
"""

import dataclasses
import math

import cv2
import numpy as np

# Linear-light colours (R, G, B) of nozzle metals as the ring light shows them.
METALS = {
    "brass": (0.95, 0.70, 0.36),
    "copper": (0.95, 0.52, 0.38),
    "steel": (0.78, 0.78, 0.80),
    "nickel": (0.85, 0.83, 0.78),
    "black_coated": (0.30, 0.30, 0.33),
    "ruby": (0.95, 0.22, 0.28),
}
# Surfaces behind the nozzle.
BACKDROPS = {
    "aluminium_block": (0.40, 0.40, 0.42),
    "red_sock": (0.55, 0.06, 0.04),
    "orange_sock": (0.75, 0.28, 0.04),
    "blue_sock": (0.05, 0.15, 0.55),
    "black_sock": (0.04, 0.04, 0.045),
    "white_sock": (0.70, 0.70, 0.66),
    "dark": (0.01, 0.01, 0.012),
}
FILAMENTS = [(0.9, 0.1, 0.08), (0.05, 0.5, 0.1), (0.1, 0.2, 0.8), (0.95, 0.9, 0.85),
             (0.03, 0.03, 0.03), (0.9, 0.75, 0.05), (0.6, 0.6, 0.62), (0.9, 0.35, 0.05)]


@dataclasses.dataclass
class Scene:
    """Everything that decides one frame (see :func:`random_scene`)."""

    size: tuple                   # output (width, height)
    nozzle: bool = True
    center: tuple = (0.0, 0.0)    # bore centre, sensor pixels
    bore_radius: float = 10.0     # sensor pixels
    face_ratio: float = 2.5       # tip-face radius / bore radius
    cone_ratio: float = 4.0       # cone's outer radius / bore radius
    hex_ratio: float = 7.0        # hex body's inscribed radius / bore radius
    tilt_deg: float = 0.0
    tilt_dir: float = 0.0         # radians
    metal: str = "brass"
    face_gain: float = 1.6        # ring-light reflection off the face
    chamfer: float = 0.08         # width, bore radii
    grooves: float = 0.05         # amplitude of turning grooves
    led_count: int = 8            # 0: a continuous specular ring
    led_gain: float = 1.5
    led_ring: float = 0.6         # position across the face, 0 rim .. 1 edge
    scratches: int = 2
    burnt: int = 1
    glint: bool = False
    ooze: bool = False
    ooze_colour: tuple = (0.9, 0.1, 0.08)
    backdrop: str = "aluminium_block"
    backdrop_offset: tuple = (0.0, 0.0)
    holes: int = 0                # dark screw holes in the backdrop
    light_dir: float = 0.0        # radians
    light_gradient: float = 0.2
    vignetting: float = 0.3
    exposure: float = 0.8         # face level after auto-exposure (1 = white)
    defocus: float = 0.5          # pillbox radius at the tip face, sensor px
    back_defocus: float = 4.0     # pillbox radius behind, sensor px
    shot_noise: float = 0.004
    read_noise: float = 0.006
    white_balance: tuple = (1.0, 1.0, 1.0)
    sharpen: float = 0.0
    sensor_scale: float = 1.0     # sensor size / output size
    jpeg_quality: int = 0         # 0: no JPEG
    seed: int = 0


def random_scene(rng, size, nozzle=True, radius_range=(6.0, 80.0)):
    """Draw a scene for an output frame of ``size`` = (width, height).

    The bore radius is log-uniform within ``radius_range``, cut so that the
    tip face fits in the frame; the nozzle lies anywhere it fits.
    """
    width, height = size
    s = dict(size=tuple(size), nozzle=nozzle, seed=int(rng.integers(2**31)))
    s["sensor_scale"] = 0.5 if rng.random() < 0.15 and min(size) >= 480 else 1.0
    s["face_ratio"] = float(rng.uniform(1.6, 3.5))
    s["cone_ratio"] = s["face_ratio"] * float(rng.uniform(1.3, 2.0))
    s["hex_ratio"] = s["cone_ratio"] * float(rng.uniform(1.2, 1.8))
    lo, hi = radius_range
    hi = min(hi, 0.45 * min(size) / s["face_ratio"])
    lo = min(lo, hi)
    radius_out = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
    margin = radius_out * s["face_ratio"] * 1.05 + 3
    cx = float(rng.uniform(margin, width - margin))
    cy = float(rng.uniform(margin, height - margin))
    k = s["sensor_scale"]
    s["center"] = ((cx + 0.5) * k - 0.5, (cy + 0.5) * k - 0.5)
    s["bore_radius"] = radius_out * k
    s["tilt_deg"] = float(rng.choice([0.0, rng.uniform(0, 10), rng.uniform(10, 20)],
                                     p=[0.4, 0.4, 0.2]))
    s["tilt_dir"] = float(rng.uniform(0, math.pi))
    s["metal"] = str(rng.choice(list(METALS), p=[0.4, 0.1, 0.2, 0.1, 0.1, 0.1]))
    s["face_gain"] = float(rng.uniform(1.0, 2.5))
    s["chamfer"] = float(rng.uniform(0.0, 0.2))
    s["grooves"] = float(rng.uniform(0.0, 0.15))
    s["led_count"] = int(rng.choice([0, 4, 6, 8, 12, 16]))
    s["led_gain"] = float(rng.uniform(0.3, 3.0))
    s["led_ring"] = float(rng.uniform(0.2, 0.9))
    s["scratches"] = int(rng.integers(0, 6))
    s["burnt"] = int(rng.choice([0, 0, 1, 2, 3]))
    s["glint"] = bool(rng.random() < 0.3)
    s["ooze"] = bool(rng.random() < 0.2)
    s["ooze_colour"] = tuple(FILAMENTS[int(rng.integers(len(FILAMENTS)))])
    s["backdrop"] = str(rng.choice(list(BACKDROPS)))
    s["backdrop_offset"] = (float(rng.uniform(-0.3, 0.3) * width),
                            float(rng.uniform(-0.3, 0.3) * height))
    s["holes"] = int(rng.choice([0, 0, 1, 2])) if nozzle else int(rng.integers(0, 4))
    s["light_dir"] = float(rng.uniform(0, 2 * math.pi))
    s["light_gradient"] = float(rng.uniform(0.0, 0.6))
    s["vignetting"] = float(rng.uniform(0.0, 0.6))
    s["exposure"] = float(rng.choice([rng.uniform(0.25, 0.5), rng.uniform(0.5, 0.95),
                                      rng.uniform(0.95, 1.8)], p=[0.25, 0.45, 0.3]))
    s["defocus"] = float(rng.choice([rng.uniform(0, 0.7), rng.uniform(0.7, 1.5),
                                     rng.uniform(1.5, 3.0)], p=[0.45, 0.35, 0.2])) * k
    s["back_defocus"] = max(s["defocus"], float(rng.uniform(2.0, 8.0)) * k)
    s["shot_noise"] = float(rng.uniform(0.0005, 0.006))
    s["read_noise"] = float(rng.uniform(0.001, 0.012))
    s["white_balance"] = tuple(float(g) for g in rng.uniform(0.85, 1.15, 3))
    s["sharpen"] = float(rng.choice([0.0, rng.uniform(0.3, 1.2)]))
    small = max(size) <= 400
    s["jpeg_quality"] = int(rng.choice([0, rng.integers(25, 60), rng.integers(60, 95)],
                                       p=[0.1, 0.5, 0.4] if small else [0.3, 0.2, 0.5]))
    return Scene(**s)


def _coverage(signed_distance):
    """Fraction of a pixel inside an edge at ``signed_distance`` px (<0 inside)."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _pillbox(image, radius):
    """Defocus: convolve with a uniform disc of ``radius`` px (anti-aliased)."""
    if radius < 0.3:
        return image
    n = int(math.ceil(radius)) + 1
    y, x = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float32)
    kernel = _coverage(np.hypot(x, y) - radius)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng, shape, scale):
    """Zero-mean, unit-ish smooth random field with features ~``scale`` px."""
    h, w = shape
    sh, sw = max(2, int(h / scale) + 2), max(2, int(w / scale) + 2)
    field = rng.standard_normal((sh, sw)).astype(np.float32)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / max(1e-6, float(field.std()))


def _backdrop(scene, rng, shape):
    """The far layer: heater block or sock, hex body and screw holes."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array(BACKDROPS[scene.backdrop], np.float32)
    texture = 1.0 + 0.15 * _smooth_noise(rng, shape, max(4.0, min(shape) / 20))
    texture += 0.05 * _smooth_noise(rng, shape, 2.0)
    img = base[None, None, :] * texture[:, :, None]
    # Where the block ends, a darker void.
    ox, oy = scene.backdrop_offset
    edge = (x - w / 2 - ox) * math.cos(scene.light_dir) + (y - h / 2 - oy) * math.sin(scene.light_dir)
    block = _coverage(edge - 0.35 * max(w, h))[:, :, None]
    img = img * block + 0.015 * (1 - block)
    for _ in range(scene.holes):
        r = float(rng.uniform(0.02, 0.08) * min(w, h))
        hx, hy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        d = np.hypot(x - hx, y - hy)
        # A screw hole: a lighter matte chamfer ring around a dark hole.
        ring = _coverage(d - r * 1.25) - _coverage(d - r)
        hole = _coverage(d - r)
        img = img * (1 - hole[:, :, None]) + 0.01 * hole[:, :, None]
        img = img * (1 + 0.3 * ring[:, :, None])
    if scene.nozzle:
        u, v, rho, grad = _tip_coordinates(scene, x, y)
        metal = np.array(METALS[scene.metal], np.float32)
        # Hexagon: max over the six face normals of the projected distance.
        phi = math.radians(rng.uniform(0, 60))
        hexd = np.max(np.stack([u * math.cos(phi + k * math.pi / 3) +
                                v * math.sin(phi + k * math.pi / 3) for k in range(6)]), axis=0)
        hex_cov = _coverage((hexd - scene.hex_ratio * scene.bore_radius) / grad)[:, :, None]
        angle = np.arctan2(v, u)
        facet = 0.35 + 0.25 * np.cos(np.round((angle - phi) / (math.pi / 3)) * (math.pi / 3) - scene.light_dir)
        img = img * (1 - hex_cov) + (metal * 0.6)[None, None, :] * facet[:, :, None] * hex_cov
    return img


def _tip_coordinates(scene, x, y):
    """Tip-plane coordinates of pixels: (u, v, rho, |grad rho|) in bore px.

    The tilt foreshortens the tip plane by cos(tilt) across ``tilt_dir``.
    """
    c, s = math.cos(scene.tilt_dir), math.sin(scene.tilt_dir)
    squeeze = math.cos(math.radians(scene.tilt_deg))
    dx, dy = x - scene.center[0], y - scene.center[1]
    a = dx * c + dy * s
    b = (-dx * s + dy * c) / squeeze
    rho = np.hypot(a, b)
    safe = np.maximum(rho, 1e-6)
    grad = np.hypot(a, b / squeeze) / safe
    # Back to image-aligned axes (only the tilt squeeze removed).
    u = a * c - b * s
    v = a * s + b * c
    return u, v, rho, np.maximum(grad, 1e-6)


def _tip(scene, rng, shape):
    """The near layer (tip face, bore, cone) in linear RGB, and its cover."""
    h, w = shape
    r0 = scene.bore_radius
    reach = int(math.ceil(r0 * scene.cone_ratio / math.cos(math.radians(scene.tilt_deg)))) + 4
    x0, x1 = max(0, int(scene.center[0]) - reach), min(w, int(scene.center[0]) + reach + 1)
    y0, y1 = max(0, int(scene.center[1]) - reach), min(h, int(scene.center[1]) + reach + 1)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v, rho, grad = _tip_coordinates(scene, x, y)
    angle = np.arctan2(v, u)
    metal = np.array(METALS[scene.metal], np.float32)
    rf, rc = r0 * scene.face_ratio, r0 * scene.cone_ratio
    # Face: mirror of the ring light, turning grooves, falls off a little.
    face = scene.face_gain * (1 - 0.15 * (rho / rf) ** 2)
    face = face * (1 + scene.grooves * np.sin(2 * math.pi * rho / float(rng.uniform(1.2, 4.0))))
    ring_r = r0 + scene.led_ring * (rf - r0)
    ring_w = max(0.8, 0.06 * (rf - r0))
    if scene.led_count == 0:
        face = face + scene.led_gain * np.exp(-0.5 * ((rho - ring_r) / ring_w) ** 2)
    else:
        start = rng.uniform(0, 2 * math.pi)
        for k in range(scene.led_count):
            t = start + 2 * math.pi * k / scene.led_count
            d2 = (u - ring_r * math.cos(t)) ** 2 + (v - ring_r * math.sin(t)) ** 2
            face = face + scene.led_gain * np.exp(-0.5 * d2 / (1.5 * ring_w) ** 2)
    colour = metal[None, None, :] * face[:, :, None]
    # Scratches: thin straight lines across the face, lighter or darker.
    for _ in range(scene.scratches):
        t = rng.uniform(0, math.pi)
        off = rng.uniform(-rf, rf)
        d = np.abs(u * math.sin(t) - v * math.cos(t) - off)
        line = _coverage(d - rng.uniform(0.3, 1.0))
        colour = colour * (1 + rng.choice([-0.5, 0.4]) * line[:, :, None])
    # Burnt residue: brown blotches on the face and cone, a sector at a time.
    for _ in range(scene.burnt):
        blot = _smooth_noise(rng, rho.shape, max(2.0, r0 / 2))
        centre_t = rng.uniform(-math.pi, math.pi)
        sector = np.cos(angle - centre_t) > math.cos(rng.uniform(0.3, 1.2))
        inner = rng.uniform(1.0, 1.8) * r0
        mask = (blot > 0.3) & sector & (rho > inner)
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)[:, :, None]
        brown = np.array([0.25, 0.14, 0.06], np.float32) * rng.uniform(0.3, 1.0)
        colour = colour * (1 - soft) + brown * face[:, :, None] * 0.5 * soft
    # Cone: the ring light glances off; diffuse and lit from one side.
    cone_level = 0.12 + 0.25 * (1 + np.cos(angle - scene.light_dir)) * (rc - rho) / (rc - rf)
    cone = metal[None, None, :] * np.clip(cone_level, 0.05, 1)[:, :, None]
    on_face = _coverage((rho - rf) / grad)[:, :, None]
    colour = colour * on_face + cone * (1 - on_face)
    # Chamfer: a thin darker ring at the rim of the bore.
    rim = r0 * (1 + scene.chamfer)
    in_rim = _coverage((rho - rim) / grad)[:, :, None]
    colour = colour * (1 - in_rim) + colour * 0.4 * in_rim
    # Bore: dark; filament inside may glint.
    bore = np.array([0.02, 0.018, 0.015], np.float32) * rng.uniform(0.3, 2.0)
    bore = np.broadcast_to(bore, colour.shape).copy()
    if scene.glint:
        gt = rng.uniform(0, 2 * math.pi)
        gr = rng.uniform(0, 0.5) * r0
        gs = rng.uniform(0.08, 0.25) * r0
        d2 = (u - gr * math.cos(gt)) ** 2 + (v - gr * math.sin(gt)) ** 2
        bore += rng.uniform(0.3, 1.5) * np.exp(-0.5 * d2 / gs ** 2)[:, :, None]
    in_bore = _coverage((rho - r0) / grad)[:, :, None]
    colour = colour * (1 - in_bore) + bore * in_bore
    # Ooze: a glossy blob of filament over part of the rim.
    if scene.ooze:
        t = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(0.9, 1.4) * r0
        br = rng.uniform(0.25, 0.6) * r0
        d = np.hypot(u - dist * math.cos(t), v - dist * math.sin(t))
        blob = _coverage((d - br) / grad)[:, :, None]
        fil = np.array(scene.ooze_colour, np.float32) * (0.4 + 0.6 * np.clip(1 - d / br, 0, 1))[:, :, None]
        colour = colour * (1 - blob) + fil * blob
    cover = _coverage((rho - rc) / grad)
    return (x0, y0), colour, cover


def _mosaic_noise(rng, linear, scene):
    """RGGB mosaic of a linear RGB image with shot and read noise."""
    h, w = linear.shape[:2]
    mosaic = np.empty((h, w), np.float32)
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    sigma = np.sqrt(scene.shot_noise * np.clip(mosaic, 0, None) + scene.read_noise ** 2)
    return mosaic + sigma * rng.standard_normal((h, w)).astype(np.float32)


def render(scene):
    """Render a scene.

    Returns
    -------
    image : ndarray of uint8, shape (H, W, 3), BGR
    truth : (float, float) or None
        Bore centre in output pixels (OpenCV convention), None without a
        nozzle.
    """
    rng = np.random.default_rng(scene.seed)
    width, height = scene.size
    shape = (max(2, round(height * scene.sensor_scale)), max(2, round(width * scene.sensor_scale)))
    shape = (shape[0] + shape[0] % 2, shape[1] + shape[1] % 2)     # whole Bayer cells
    far = _pillbox(_backdrop(scene, rng, shape), scene.back_defocus)
    img = far
    if scene.nozzle:
        (x0, y0), near, cover = _tip(scene, rng, shape)
        hh, ww = cover.shape
        # Defocus the near layer with its cover (premultiplied), then lay it
        # over the far layer.
        pad = int(math.ceil(scene.defocus)) + 2
        a0, b0 = max(0, x0 - pad), max(0, y0 - pad)
        a1, b1 = min(shape[1], x0 + ww + pad), min(shape[0], y0 + hh + pad)
        premul = np.zeros((b1 - b0, a1 - a0, 3), np.float32)
        alpha = np.zeros((b1 - b0, a1 - a0), np.float32)
        premul[y0 - b0:y0 - b0 + hh, x0 - a0:x0 - a0 + ww] = near * cover[:, :, None]
        alpha[y0 - b0:y0 - b0 + hh, x0 - a0:x0 - a0 + ww] = cover
        premul = _pillbox(premul, scene.defocus)
        alpha = _pillbox(alpha, scene.defocus)
        img = far.copy()
        img[b0:b1, a0:a1] = far[b0:b1, a0:a1] * (1 - alpha[:, :, None]) + premul
    # Light: a gradient across the frame and vignetting around its centre.
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    cx, cy = (shape[1] - 1) / 2, (shape[0] - 1) / 2
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / (cx * cx + cy * cy)
    along = ((x - cx) * math.cos(scene.light_dir) + (y - cy) * math.sin(scene.light_dir)) / max(cx, cy)
    img = img * ((1 - scene.vignetting * r2) * (1 + 0.5 * scene.light_gradient * along))[:, :, None]
    # Auto-exposure: the tip face's level (or the frame's bright end) to target.
    if scene.nozzle:
        cxs, cys = int(round(scene.center[0])), int(round(scene.center[1]))
        rr = max(2, int(scene.bore_radius * (1 + scene.face_ratio) / 2))
        patch = img[max(0, cys - rr - 2):cys + rr + 3, max(0, cxs - rr - 2):cxs + rr + 3].mean(axis=2)
        ref = float(np.percentile(patch, 75))
    else:
        ref = float(np.percentile(img.mean(axis=2), 97))
    img = img * (scene.exposure / max(ref, 1e-4))
    img = img * np.array(scene.white_balance, np.float32)[None, None, :]
    mosaic = np.clip(_mosaic_noise(rng, img, scene), 0.0, 1.0)
    raw = np.round(255.0 * mosaic ** (1 / 2.2)).astype(np.uint8)
    # OpenCV names Bayer patterns from the second row and column: its "BG"
    # is an RGGB mosaic starting at (0, 0).
    bgr = cv2.cvtColor(raw, cv2.COLOR_BayerBG2BGR)
    if scene.sharpen > 0:
        soft = cv2.GaussianBlur(bgr, (0, 0), 1.0)
        bgr = cv2.addWeighted(bgr, 1 + scene.sharpen, soft, -scene.sharpen, 0)
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    if scene.jpeg_quality:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg_quality])
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if not scene.nozzle:
        return bgr, None
    sx, sy = width / shape[1], height / shape[0]
    truth = ((scene.center[0] + 0.5) * sx - 0.5, (scene.center[1] + 0.5) * sy - 0.5)
    return bgr, truth


def random_frame(rng, size, nozzle=True, radius_range=(6.0, 80.0)):
    """``(image, truth, scene)`` for a freshly drawn scene."""
    scene = random_scene(rng, size, nozzle, radius_range)
    image, truth = render(scene)
    return image, truth, scene
