"""Find the nozzle bore in one camera frame, to a fraction of a pixel.

Seen from below, a nozzle's tip is a bright polished annulus (the collar)
around a dark round hole (the bore). The detector looks for exactly that:

1. **Candidates**: the frame, downscaled, is thresholded at several grey
   levels; the outer contours of dark islands that are round and compact
   are kept (the collar encloses the bore, so at any level between the two
   the bore is an island of its own). Big frames are searched coarse first.
2. **Verification**: from each candidate's centre, grey-level profiles are
   read along rays at full resolution. A bore has, on most rays, a dark
   inside, a clear rise to a bright collar and a fall beyond the collar
   that stays down where the tip face ends (a hole in a flat plate has
   none; texture and vignetting only dip); the rise must stand well above the
   frame's noise, and most of the inside must be dark (a glint on the
   filament may light a little of it).
3. **Refinement**: on each ray the edge is placed where the profile crosses
   half-way between bore and the face's typical level (sub-pixel; of
   several crossings, the one nearest the expected radius, so a glint in
   the bore is passed over; where the collar is clipped at white, at the
   steepest point of the rise instead). A circle is fitted
   to the edge points with RANSAC and refined by geometric least squares
   (``skimage.measure.CircleModel``), so rays spoilt by dirt, ooze or a
   glint drop out; an ellipse (``cv2.fitEllipse``) replaces it when the
   bore is seen at an angle. Rays are cast again from the fitted centre
   and the fit repeated.

A frame without such a structure returns None: the detector never guesses.
"""

import dataclasses
import math

import cv2
import numpy as np
from skimage.measure import CircleModel

# Noise is estimated on a central window of at most this size (px).
NOISE_WINDOW = (640, 480)
# Longest side of the copy searched for candidates (px). Verification and
# refinement always run on the full frame.
CANDIDATE_LONG_SIDE = 320
# Candidates are found down to this bore radius in the search copy (px).
MIN_SEARCH_RADIUS = 2.0
# Threshold levels, as fractions of the frame's dark..bright range: closer
# together at the dark end, where bores are.
THRESHOLD_FRACTIONS = np.linspace(0.2, 0.85, 10) ** 2
# Most candidates verified per frame, the most persistent first.
MAX_CANDIDATES = 12
# A ray counts when the bore-to-collar rise is this many times the noise ...
MIN_RAY_SNR = 4.0
# ... and at least this many grey levels (JPEG smooths noise away, so the
# noise estimate alone can be too optimistic in dark frames).
MIN_RISE_LEVELS = 12.0
# Fraction of rays that must show the edge (dirt may hide the rest).
MIN_COMPLETENESS = 0.75
# Fraction of the bore's inside that must be darker than the edge level.
MIN_DARK_FRACTION = 0.75
# Rays are read out to this many bore radii (wide tip faces of small
# nozzles reach ~4 radii).
RAY_LENGTH = 5.0
# Beyond the collar the brightness must fall by this fraction of the
# bore-to-collar rise (a hole in a flat plate has no collar) ...
RING_DROP = 0.35
# ... on at least this fraction of the rays that show the edge, and stay
# down over at least this fraction of the ray beyond the fall.
MIN_CLOSURE = 0.75
MIN_STAYS_DOWN = 0.5
# An ellipse replaces the circle when it fits more edge points or leaves
# residuals this much smaller; it is seeded from the points within
# ELLIPSE_SEED radii of a loose circle, and may be at most this flat.
ELLIPSE_GAIN = 0.7
# Edge points are never held to less than this (px) around a fitted curve.
MIN_TOLERANCE = 0.15
ELLIPSE_SEED = 0.15
MIN_AXIS_RATIO = 0.75
# A collar this bright is taken as clipped at white (JPEG rings a little
# below 255).
CLIPPED_LEVEL = 245.0
CLIPPED_PENALTY = 0.3
# Gaussian smoothing (px) of the patch the rays are read from.
SAMPLE_SMOOTHING = 0.8
# Rays cast at a candidate's first look.
QUICK_RAYS = 32
# Smallest accepted score.
MIN_SCORE = 0.5
# A candidate scoring this high ends the search.
EARLY_ACCEPT = 0.95


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detected nozzle bore.

    Attributes
    ----------
    center : (float, float)
        Bore centre ``(u, v)`` in the frame's pixels, OpenCV convention (the
        centre of pixel (0, 0) is (0.0, 0.0)).
    radius : float
        Bore radius, px.
    score : float
        Confidence between 0 and 1.
    """

    center: tuple
    radius: float
    score: float


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


def search_scales(shape, min_radius):
    """Scales of the candidate search copies, coarse first.

    The coarsest copy has a long side of ``CANDIDATE_LONG_SIDE`` px; each
    next one is twice as fine, down to where a bore of ``min_radius`` still
    measures ``MIN_SEARCH_RADIUS`` px. A finer copy is searched only when
    the coarser ones found nothing (small bores in big frames).
    """
    scale = min(1.0, CANDIDATE_LONG_SIDE / max(shape))
    finest = min(1.0, max(scale, MIN_SEARCH_RADIUS / max(min_radius, 1e-3)))
    scales = [scale]
    while scales[-1] * 1.25 < finest:
        scales.append(min(2.0 * scales[-1], finest))
    return scales


def find_candidates(gray, min_radius, max_radius, scale=None):
    """Dark, round, compact regions that may be a bore.

    The frame is thresholded at several grey levels spread over its range
    (closer together at the dark end, where bores are); the collar encloses
    the bore, so at any level between the two the bore is an island of its
    own. Islands of the right size that are round and compact are kept. The
    search runs on a downscaled copy (see :func:`search_scales`).

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    min_radius, max_radius : float
        Bore radius range in full-frame pixels.
    scale : float, optional
        Scale of the searched copy; by default the finest of
        :func:`search_scales`.

    Returns
    -------
    list of (u, v, r, persistence)
        Centre and equivalent radius in full-frame pixels, and at how many
        levels the island was found, most persistent first.
    """
    height, width = gray.shape
    if scale is None:
        scale = search_scales(gray.shape, min_radius)[-1]
    if scale < 1.0:
        small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    else:
        small = gray
    sh, sw = small.shape
    sx, sy = width / sw, height / sh
    hist = np.cumsum(cv2.calcHist([small], [0], None, [256], [0, 256]).ravel())
    lo = float(np.searchsorted(hist, 0.01 * hist[-1]))
    hi = float(np.searchsorted(hist, 0.9995 * hist[-1]))
    if hi - lo < MIN_RISE_LEVELS:
        return []
    r_lo = max(min_radius / sx * 0.6, 1.0)
    r_hi = max_radius / sx * 1.3
    area_lo, area_hi = math.pi * r_lo * r_lo, math.pi * r_hi * r_hi
    p_lo, p_hi = 2 * math.pi * r_lo, 2 * math.pi * r_hi * 1.3
    found = []
    for fraction in THRESHOLD_FRACTIONS:
        _, mask = cv2.threshold(small, lo + fraction * (hi - lo), 255, cv2.THRESH_BINARY_INV)
        # Outer boundaries of the dark islands are the top level of RETR_CCOMP.
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            continue
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
            if parent != -1 or not p_lo <= len(contour) <= p_hi:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            if x <= 0 or y <= 0 or x + w >= sw or y + h >= sh:
                continue        # cut by the frame edge: the centre would be wrong
            if max(w, h) > 1.6 * min(w, h) + 1:
                continue        # elongated
            m = cv2.moments(contour)
            # Pixel count of the island: polygon through the boundary pixel
            # centres plus the half pixel around it.
            area = m["m00"] + 0.5 * len(contour) + 1.0
            if not (area_lo <= area <= area_hi and 0.55 * w * h <= area <= 0.98 * w * h + 2):
                continue        # not round and compact (a disc fills pi/4 of its box)
            if m["m00"] > 0:
                cu, cv_ = m["m10"] / m["m00"], m["m01"] / m["m00"]
            else:
                cu, cv_ = x + 0.5 * (w - 1), y + 0.5 * (h - 1)
            found.append(((cu + 0.5) * sx - 0.5, (cv_ + 0.5) * sy - 0.5,
                          math.sqrt(area / math.pi) * sx))
    # Merge the same island seen at several levels.
    merged = []
    for u, v, r in sorted(found, key=lambda c: -c[2]):
        for m in merged:
            if math.hypot(u - m[0], v - m[1]) < 0.5 * max(r, m[2]) + sx and \
                    0.5 < r / m[2] < 2.0:
                m[3] += 1
                break
        else:
            merged.append([u, v, r, 1])
    merged.sort(key=lambda m: -m[3])
    return [tuple(m) for m in merged[:MAX_CANDIDATES]]


def _ray_profiles(gray, center, radii, angles, smooth=True):
    """Samples of the lightly smoothed frame along rays; NaN outside the frame.

    Only the patch the rays cover is smoothed (Gaussian, sigma
    ``SAMPLE_SMOOTHING``): it evens out pixel noise and the staircase of
    sharp, barely blurred edges, which would otherwise bias sub-pixel
    crossings; being symmetric it moves no edge.
    """
    height, width = gray.shape
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    map_x = (center[0] + cos * radii[None, :]).astype(np.float32)
    map_y = (center[1] + sin * radii[None, :]).astype(np.float32)
    if not smooth:
        out = cv2.remap(gray, map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        out[_outside(map_x, map_y, width, height)] = np.nan
        return out
    pad = 4
    x0 = max(int(math.floor(min(center[0] - radii[-1], width))) - pad, 0)
    x1 = min(int(math.ceil(max(center[0] + radii[-1], -1))) + pad + 1, width)
    y0 = max(int(math.floor(min(center[1] - radii[-1], height))) - pad, 0)
    y1 = min(int(math.ceil(max(center[1] + radii[-1], -1))) + pad + 1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.full(map_x.shape, np.nan, np.float32)
    patch = cv2.GaussianBlur(gray[y0:y1, x0:x1].astype(np.float32), (0, 0),
                             SAMPLE_SMOOTHING, borderType=cv2.BORDER_REPLICATE)
    map_x -= x0
    map_y -= y0
    # Outside the frame is NaN; the patch border lies at the frame border or
    # beyond the longest ray, so only such samples are affected.
    out = cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out[_outside(map_x, map_y, x1 - x0, y1 - y0)] = np.nan
    return out


def _outside(map_x, map_y, width, height):
    """Sample positions outside an image of ``width`` x ``height`` pixels."""
    return (map_x < -0.5) | (map_x > width - 0.5) | (map_y < -0.5) | (map_y > height - 0.5)


def _rise_nearest(profiles, radii, thresholds, start, expected):
    """Sub-sample radius where each profile rises through its threshold.

    Of all upward crossings after index ``start``, the one nearest the
    ``expected`` radius is taken: a glint on the filament inside the bore
    rises through the threshold too, but nearer the centre. Returns NaN for
    rays without a crossing.
    """
    above = profiles >= thresholds[:, None]
    up = np.zeros(profiles.shape, bool)
    up[:, start + 1:] = above[:, start + 1:] & ~above[:, start:-1]
    rays, ks = np.nonzero(up)
    edge = np.full(len(profiles), np.nan)
    if rays.size == 0:
        return edge
    p0, p1 = profiles[rays, ks - 1], profiles[rays, ks]
    frac = np.clip((thresholds[rays] - p0) / np.where(p1 - p0 == 0, 1, p1 - p0), 0, 1)
    crossing = radii[ks - 1] + frac * (radii[ks] - radii[ks - 1])
    # Nearest crossing per ray: sort by (ray, distance), keep each ray's first.
    order = np.lexsort((np.abs(crossing - expected), rays))
    rays, crossing = rays[order], crossing[order]
    first = np.ones(len(rays), bool)
    first[1:] = rays[1:] != rays[:-1]
    edge[rays[first]] = crossing[first]
    return edge


def _steepest_rise(profiles, radii, near, step):
    """Sub-sample radius of the steepest rise within 2 px of ``near``.

    The slope is taken over a 1 px baseline (less noise than neighbouring
    samples) and a parabola through its largest value and the values one
    baseline either side places the peak.
    """
    n = max(1, int(round(0.5 / step)))
    slope = np.full(profiles.shape, np.nan, np.float32)
    slope[:, n:-n] = profiles[:, 2 * n:] - profiles[:, :-2 * n]   # centred at k
    reach = max(2, int(round(2.0 / step)))
    k0 = np.searchsorted(radii, near)
    out = near.copy()
    for i, k in enumerate(k0):
        lo, hi = max(int(k) - reach, 2 * n), min(int(k) + reach, profiles.shape[1] - 2 * n - 1)
        if hi <= lo:
            continue
        window = slope[i, lo:hi + 1]
        if not np.all(np.isfinite(window)):
            continue
        j = lo + int(np.argmax(window))
        a, b, c = slope[i, j - n], slope[i, j], slope[i, j + n]
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom < 0 else 0.0
        out[i] = radii[j] + float(np.clip(offset, -1.0, 1.0)) * n * step
    return out


def _circumcircles(p1, p2, p3):
    """Centres (M, 2) and radii (M,) of the circles through point triples."""
    ax, ay = p1.T
    bx, by = p2.T
    cx, cy = p3.T
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
        uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
    centres = np.column_stack([ux, uy])
    return centres, np.hypot(ax - ux, ay - uy)


def _least_squares_circle(points):
    """Geometric least-squares circle (``skimage.measure.CircleModel``)."""
    if hasattr(CircleModel, "from_estimate"):      # scikit-image >= 0.26
        model = CircleModel.from_estimate(points)
        if not model:
            return None
    else:
        model = CircleModel()
        if not model.estimate(points):
            return None
        model.center = model.params[:2]
        model.radius = model.params[2]
    return np.asarray(model.center, float), float(model.radius)


def fit_circle_robust(points, tolerance, hypotheses=48):
    """Circle through ordered edge points, ignoring outliers.

    RANSAC with all hypotheses evaluated at once: each is the circle through
    three points about a third of the way round from each other (well
    conditioned), scored by the MSAC cost (squared residuals, capped at
    ``tolerance``); the best one's inliers are refitted by geometric least
    squares. (``skimage.measure.ransac`` does the same one hypothesis at a
    time and costs ~100x more, too slow for a per-frame budget.)

    Parameters
    ----------
    points : ndarray, shape (N, 2)
        Edge points, in order around the circle.
    tolerance : float
        Largest distance of an inlier from the circle.
    hypotheses : int
        Number of three-point circles tried.

    Returns
    -------
    (center, radius, inliers) or None
        ``inliers`` is a boolean mask over ``points``.
    """
    n = len(points)
    if n < 6:
        return None
    origin = points.mean(axis=0)
    p = points - origin
    rng = np.random.default_rng(0)
    i = rng.integers(0, n, hypotheses)
    j = (i + n // 3 + rng.integers(-n // 12, n // 12 + 1, hypotheses)) % n
    k = (i + 2 * n // 3 + rng.integers(-n // 12, n // 12 + 1, hypotheses)) % n
    centres, radii = _circumcircles(p[i], p[j], p[k])
    ok = np.isfinite(radii)
    if not ok.any():
        return None
    centres, radii = centres[ok], radii[ok]
    res = np.abs(np.hypot(p[None, :, 0] - centres[:, 0, None],
                          p[None, :, 1] - centres[:, 1, None]) - radii[:, None])
    cost = np.minimum(res, tolerance) ** 2
    best = int(np.argmin(cost.sum(axis=1)))
    inliers = res[best] <= tolerance
    for _ in range(3):
        if inliers.sum() < 6:
            return None
        fit = _least_squares_circle(p[inliers])
        if fit is None:
            return None
        centre, radius = fit
        residuals = np.abs(np.hypot(*(p - centre).T) - radius)
        # Tighten to the edge's own scatter (5 sigma, robust), so points
        # only partly pushed out by dirt at the edge of a blob drop out too.
        scatter = 1.4826 * float(np.median(residuals[inliers]))
        inliers = residuals <= min(tolerance, max(5.0 * scatter, MIN_TOLERANCE))
    if inliers.sum() < 6:
        return None
    return centre + origin, radius, inliers


def measure_bore(gray, noise, center, radius, quick=False):
    """Verify a candidate bore and measure its edge.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
        The full frame in grey levels.
    noise : float
        Pixel noise, grey levels.
    center : (float, float)
        Approximate bore centre, px.
    radius : float
        Approximate bore radius, px.
    quick : bool
        A first look: ``QUICK_RAYS`` rays, coarser steps and no smoothing.
        By default about one ray per 1.5 px of circumference (48-144).

    Returns
    -------
    dict or None
        ``center``, ``radius``, ``completeness`` (fraction of rays whose edge
        fits the circle), ``snr`` (median bore-to-collar rise over noise),
        ``closure`` (fraction of those rays on which the brightness falls
        again beyond the collar and stays down over at least half the rest
        of the ray: a collar is a ring, not a plate) and ``rms``
        (edge residual, px), ``clipped`` (fraction of those rays whose collar
        is clipped at white) and ``axis_ratio`` (1 for a circle, less when an
        ellipse fitted better); None when the candidate has no usable edge.
    """
    # Coarse samples out to RAY_LENGTH radii for the collar's outer fall;
    # for the measurement proper, fine smoothed samples out to 2 radii.
    coarse_step = float(np.clip(radius / 12.0, 0.25, 2.0))
    far_radii = np.arange(0.0, RAY_LENGTH * radius + coarse_step, coarse_step,
                          dtype=np.float32)
    if quick:
        n_rays, step = QUICK_RAYS, coarse_step
        angles = np.arange(n_rays) * (2 * math.pi / n_rays)
        radii = far_radii
        prof = far = _ray_profiles(gray, center, radii, angles, smooth=False)
    else:
        n_rays = int(np.clip(round(2 * math.pi * radius / 1.5), 48, 144))
        step = float(np.clip(radius / 48.0, 0.2, 0.5))
        angles = np.arange(n_rays) * (2 * math.pi / n_rays)
        radii = np.arange(0.0, 2.0 * radius + step, step, dtype=np.float32)
        prof = _ray_profiles(gray, center, radii, angles)
        far = _ray_profiles(gray, center, far_radii, angles, smooth=False)
    inner = prof[:, radii <= 0.5 * radius]
    if not np.isfinite(inner).any():
        return None
    bore = float(np.nanmedian(inner))
    # Collar peak: the brightest point a little beyond the expected edge.
    band_idx = np.flatnonzero((radii >= 0.7 * radius) & (radii <= 1.9 * radius))
    band = prof[:, band_idx]
    band = np.where(np.isnan(band), -np.inf, band)
    peak_idx = band_idx[np.argmax(band, axis=1)]
    rows = np.arange(n_rays)
    collar = prof[rows, peak_idx]
    rise = collar - bore
    # The half-way level uses the face's typical brightness on the ray, not
    # its peak: reflected LEDs put bright spikes on the face, and a
    # threshold following them would move the edge between the inner and
    # outer rim of a chamfered bore from ray to ray.
    bright = band > bore + 0.5 * rise[:, None]
    ordered = np.sort(np.where(bright, band, np.inf), axis=1)
    face = ordered[rows, np.maximum(bright.sum(axis=1) - 1, 0) // 2]   # median
    thresholds = bore + 0.5 * (np.where(np.isfinite(face), face, collar) - bore)
    start = max(1, int(np.searchsorted(radii, 0.3 * radius)))
    stop = max(int(peak_idx.max()) + 1, start + 2)
    edge = _rise_nearest(prof[:, :stop], radii, thresholds, start, radius)
    # Where the collar is clipped at white its true level is unknown, and the
    # half-way crossing would move with it; the steepest point of the rise
    # does not (clipping only flattens the top).
    clipped = np.flatnonzero((collar >= CLIPPED_LEVEL) & np.isfinite(edge))
    if clipped.size:
        edge[clipped] = _steepest_rise(prof[clipped, :stop], radii, edge[clipped], step)
    min_rise = max(MIN_RAY_SNR * noise, MIN_RISE_LEVELS)
    good = np.isfinite(edge) & (rise >= min_rise) & (edge <= radii[peak_idx])
    if good.sum() < max(6, MIN_COMPLETENESS * n_rays):
        return None
    # Beyond the collar the light must drop well below the collar's level.
    beyond = far_radii[None, :] > radii[peak_idx][:, None] + coarse_step
    drop_level = (collar - RING_DROP * rise)[:, None]
    # Two samples in a row, so pixel noise alone does not fake a fall.
    below = far < drop_level
    fell = below.copy()
    fell[:, :-1] &= below[:, 1:]
    fell[:, -1] = False
    fell &= beyond
    # The tip face ends at an edge, beyond which lies the darker cone or the
    # background: the fall is a step that stays down. A dip in a textured or
    # unevenly lit plate around a screw hole comes back up.
    after = np.cumsum(fell, axis=1) > 0
    seen_after = after & np.isfinite(far)
    stays = (below & seen_after).sum(axis=1) >= MIN_STAYS_DOWN * seen_after.sum(axis=1)
    closed = np.any(fell, axis=1) & stays
    # A ray that leaves the frame before it could drop tells nothing.
    known = closed | np.isfinite(far[:, -1])
    if known[good].sum() < 0.25 * good.sum():
        return None
    closure = float(closed[good].sum() / known[good].sum())
    if closure < MIN_CLOSURE:
        return None
    # The bore is a dark disc: most of its inside lies below the edge level
    # (a glint on the filament may light up to a quarter of it). A dark
    # outline around brighter texture (text, foliage) is not a bore.
    inside = prof[:, radii <= 0.8 * radius]
    seen = np.isfinite(inside)
    if not seen.any() or \
            np.mean((inside < thresholds[:, None])[seen]) < MIN_DARK_FRACTION:
        return None
    pts = np.column_stack([center[0] + np.cos(angles) * edge,
                           center[1] + np.sin(angles) * edge])[good]
    tolerance = max(0.35, 0.04 * radius)
    fit = fit_circle_robust(pts, tolerance)
    if fit is None:
        return None
    c, r, inliers = fit
    if not (0.5 * radius <= r <= 2.0 * radius) or \
            math.hypot(c[0] - center[0], c[1] - center[1]) > radius:
        return None     # the edge points belong to something else
    residuals = np.hypot(*(pts[inliers] - c).T) - r
    axis_ratio = 1.0
    if not quick:
        # A bore seen at an angle (a tilted camera, lens distortion) is an
        # ellipse: prefer one when it explains the edge clearly better.
        ellipse = fit_ellipse_robust(pts, tolerance, radius)
        if ellipse is not None and ellipse[3].sum() >= inliers.sum():
            rms_circle = math.sqrt(np.mean(residuals ** 2))
            rms_ellipse = math.sqrt(np.mean(ellipse[4] ** 2))
            if ellipse[3].sum() > 1.05 * inliers.sum() or \
                    rms_ellipse < ELLIPSE_GAIN * rms_circle:
                c, (a, b), inliers, residuals = ellipse[0], ellipse[1], ellipse[3], ellipse[4]
                r, axis_ratio = math.sqrt(a * b), b / a
    used = np.flatnonzero(good)[inliers]
    return {
        "center": (float(c[0]), float(c[1])),
        "radius": r,
        "axis_ratio": axis_ratio,
        "completeness": len(used) / n_rays,
        "snr": float(np.median(rise[used]) / noise),
        "closure": closure,
        "clipped": float(np.mean(collar[used] >= CLIPPED_LEVEL)),
        "rms": float(np.sqrt(np.mean(residuals ** 2))),
    }


def _ellipse_distances(points, ellipse):
    """Approximate distances of points from an ellipse, along rays from its centre."""
    (cx, cy), (a, b), angle = ellipse
    t = math.radians(angle)
    dx, dy = points[:, 0] - cx, points[:, 1] - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    rho = np.hypot(u / a, v / b)
    return np.hypot(dx, dy) * (1.0 - 1.0 / np.maximum(rho, 1e-9))


def fit_ellipse_robust(points, tolerance, radius):
    """Ellipse through edge points, ignoring outliers.

    Seeded by a loose robust circle (points within ``ELLIPSE_SEED`` radii of
    it), then ``cv2.fitEllipse`` is refitted on the points within
    ``tolerance`` of the previous ellipse.

    Returns
    -------
    (center, (a, b), angle_deg, inliers, residuals) or None
        Semi-axes ``a >= b``; ``residuals`` of the inliers.
    """
    seed = fit_circle_robust(points, ELLIPSE_SEED * radius)
    if seed is None:
        return None
    inliers = seed[2]
    for _ in range(3):
        if inliers.sum() < 8:
            return None
        (cx, cy), (w, h), angle = cv2.fitEllipse(points[inliers].astype(np.float32))
        if not (w > 0 and h > 0 and math.isfinite(cx) and math.isfinite(cy)):
            return None
        ellipse = ((cx, cy), (w / 2.0, h / 2.0), angle)
        dist = _ellipse_distances(points, ellipse)
        inliers = np.abs(dist) <= tolerance
    if inliers.sum() < 8:
        return None
    (cx, cy), (a, b), angle = ellipse
    if a < b:
        a, b, angle = b, a, angle + 90.0
    if b / a < MIN_AXIS_RATIO:
        return None
    return np.array([cx, cy]), (a, b), angle, inliers, dist[inliers]


def _score(m):
    """Confidence 0..1 from a bore measurement."""
    snr_term = 1.0 - math.exp(-m["snr"] / 12.0)
    closure_term = m["closure"]
    fit_term = 1.0 / (1.0 + (m["rms"] / max(0.3, 0.03 * m["radius"])) ** 2)
    # A collar clipped at white hides its true level; uneven glare then
    # moves the edge a little (up to ~0.2 px), so trust such frames less.
    clipped_term = 1.0 - CLIPPED_PENALTY * m["clipped"]
    return (m["completeness"] * snr_term * (0.5 + 0.5 * closure_term)
            * (0.5 + 0.5 * fit_term) * clipped_term)


def detect_nozzle(image, min_radius=4.0, max_radius=120.0):
    """Find the nozzle bore centre in one frame.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        BGR or grey frame.
    min_radius, max_radius : float
        Range of bore radii searched, px.

    Returns
    -------
    Detection or None
        None when no candidate looks like a bore inside a bright collar.
    """
    gray = to_gray(image)
    if gray.size == 0 or min(gray.shape) < 8:
        return None
    noise = estimate_noise(gray)
    best = None
    for scale in search_scales(gray.shape, min_radius):
        for u, v, r, _ in find_candidates(gray, min_radius, max_radius, scale):
            m = measure_bore(gray, noise, (u, v), r, quick=True)
            if m is None:
                continue
            # Cast the rays again from the fitted centre: radial rays cross
            # the edge squarely and the radius estimate is now right.
            m = measure_bore(gray, noise, m["center"], m["radius"])
            if m is None or not min_radius <= m["radius"] <= max_radius:
                continue
            if m["completeness"] < MIN_COMPLETENESS or m["closure"] < MIN_CLOSURE:
                continue
            if m["rms"] > max(0.5, 0.06 * m["radius"]):
                continue
            score = _score(m)
            if score >= MIN_SCORE and (best is None or score > best[0]):
                best = (score, m)
            if score >= EARLY_ACCEPT:
                break       # as good as it gets; later candidates are less stable
        if best is not None:
            break
    if best is None:
        return None
    score, m = best
    return Detection(center=m["center"], radius=m["radius"], score=round(score, 4))
