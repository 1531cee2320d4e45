"""Measure a bore's edge along rays and fit a circle to it, sub-pixel.

From a candidate centre, grey-level profiles are read along rays at full
resolution. A bore has, on most rays, a dark inside, a clear rise to a
bright face and a fall beyond the face that stays down where the tip face
ends (a hole in a flat plate has none; texture and vignetting only dip); the
rise must stand well above the frame's noise, and most of the inside must be
dark (a glint on the filament may light a little of it).

On each ray the edge is placed where the profile crosses half-way between
bore and the face's typical level (sub-pixel; of several crossings, the one
nearest the expected radius, so a glint in the bore is passed over; where
the face is clipped at white, at the steepest point of the rise instead). A
circle is fitted to the edge points with RANSAC, refined by geometric least
squares (``skimage.measure.CircleModel``) and finally with a soft loss
(``scipy.optimize.least_squares``), so rays spoilt by dirt, ooze or a glint
drop out without the centre jumping; an ellipse (``cv2.fitEllipse``)
replaces it when the bore is seen at an angle and its edge is seen all
round (on an arc an ellipse's extra parameters let its centre wander).
"""

import math
from types import SimpleNamespace

import cv2
import numpy as np
from scipy.ndimage import median_filter
from scipy.optimize import least_squares
from skimage.measure import CircleModel

# A ray counts when the bore-to-collar rise is this many times the noise ...
MIN_RAY_SNR = 4.0
# ... and at least this many grey levels (JPEG smooths noise away, so the
# noise estimate alone can be too optimistic in dark frames), or, on a
# dim face, this fraction of the face's level: an under-exposed face of 16
# levels over a bore of 2 is a contrast of 8:1, as plain as a bright one.
# (At 0.6, dark grass in real photos darkened to a tenth showed "bores".)
MIN_RISE_LEVELS = 12.0
DARK_FACE_RISE = 0.8
# Fraction of rays that must show the edge (dirt may hide the rest).
MIN_COMPLETENESS = 0.75
# Fraction of the bore's inside that must be darker than the edge level.
MIN_DARK_FRACTION = 0.75
# Rays are read out to this many bore radii (wide tip faces of small
# nozzles reach ~4.6 radii).
RAY_LENGTH = 5.0
# Beyond the collar the brightness must fall by this fraction of the
# bore-to-collar rise (a hole in a flat plate has no collar) ...
RING_DROP = 0.35
# ... on at least this fraction of the rays that show the edge, and stay
# down over at least this fraction of the STAY_WINDOW bore radii beyond the
# fall.
MIN_CLOSURE = 0.75
MIN_STAYS_DOWN = 0.5
STAY_WINDOW = 1.0
# An ellipse replaces the circle when it fits more edge points or leaves
# residuals this much smaller; it is seeded from the points within
# ELLIPSE_SEED radii of a loose circle, and may be at most this flat.
ELLIPSE_GAIN = 0.7
# Edge points are never held to less than this (px) around a fitted curve.
MIN_TOLERANCE = 0.15
ELLIPSE_SEED = 0.15
MIN_AXIS_RATIO = 0.75
# ... and only tried on an edge with no gap wider than an eighth of the
# circle (tilted photo-like bores that needed an ellipse had gaps up to 27
# degrees; the ragged, frame-cut axiscope bore, whose ellipses wandered,
# 52-88).
ELLIPSE_MAX_GAP = math.pi / 4
# A collar this bright is taken as clipped at white (JPEG rings a little
# below 255).
CLIPPED_LEVEL = 245.0
# A central glint wider than this fraction of the bore radius is not taken
# as one: the dark ring round it would be a thin stroke (a letter "o").
MAX_GLINT = 0.45
# Gaussian smoothing (px) of the patch the rays are read from.
SAMPLE_SMOOTHING = 0.8
# Rays cast at a candidate's first look.
QUICK_RAYS = 32


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
    samples). A sharp edge's slope peak is a few samples wide: a parabola
    through its largest value and the values one baseline either side
    places it. A defocused edge's peak is broad and flat-topped, where
    those three values are noise: its whole top (the contiguous samples
    above half its height, up to ``PEAK_SPAN`` px each side) is fitted
    instead (:func:`_broad_peaks`).
    """
    n = max(1, int(round(0.5 / step)))
    slope = np.full(profiles.shape, np.nan, np.float32)
    slope[:, n:-n] = profiles[:, 2 * n:] - profiles[:, :-2 * n]   # centred at k
    reach = max(2, int(round(2.0 / step)))
    k0 = np.searchsorted(radii, near)
    out = near.copy()
    peaks = np.full(len(k0), -1)
    for i, k in enumerate(k0):
        lo, hi = max(int(k) - reach, 2 * n), min(int(k) + reach, profiles.shape[1] - 2 * n - 1)
        if hi <= lo:
            continue
        window = slope[i, lo:hi + 1]
        if not np.all(np.isfinite(window)):
            continue
        j = peaks[i] = lo + int(np.argmax(window))
        a, b, c = slope[i, j - n], slope[i, j], slope[i, j + n]
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom < 0 else 0.0
        out[i] = radii[j] + float(np.clip(offset, -1.0, 1.0)) * n * step
    # A slope whose baseline reaches the clipped top is cut short, not a
    # sample of the edge's true slope: the broad fit leaves it out.
    unclipped = np.where(np.isfinite(slope), slope, np.nan)
    unclipped[:, n:-n][profiles[:, 2 * n:] >= CLIPPED_LEVEL] = np.nan
    broad = _broad_peaks(unclipped, peaks, step)
    ok = np.isfinite(broad)
    out[ok] = radii[peaks[ok]] + broad[ok]
    return out


# A defocused edge's slope peak is fitted over at most this many px either
# side of its largest value: the half-height half-width of a Gaussian blur
# of sigma 6.8 px.
PEAK_SPAN = 8.0
# ... when it stays above half its height over at least this many px (a
# Gaussian blur of sigma 1.7 px); a narrower peak is placed by its
# three-point parabola, whose 1 px baseline spans it.
BROAD_PEAK_PX = 4.0
# Going outwards from its top, a hump's slope may rise again by at most this
# fraction of its height (noise), or the hump ends there.
PEAK_RISE = 0.2


def _broad_peaks(slope, peaks, step):
    """Offset (px) of each broad slope peak's vertex from sample ``peaks``.

    A blurred step's slope is a Gaussian, whose logarithm is a parabola
    (Caruana's fit): least squares over the contiguous samples above half
    the peak's height, all rays at once. NaN where the peak is narrow or
    the fit is not a maximum within the span.
    """
    rows = np.arange(len(peaks))
    span = max(2, int(round(PEAK_SPAN / step)))
    offsets = np.arange(-span, span + 1)
    idx = peaks[:, None] + offsets[None, :]
    valid = (peaks[:, None] >= 0) & (idx >= 0) & (idx < slope.shape[1])
    values = slope[rows[:, None], np.clip(idx, 0, slope.shape[1] - 1)]
    values = np.where(valid & np.isfinite(values), values, np.nan)
    top = values[:, span]
    with np.errstate(invalid="ignore"):
        above = values >= 0.5 * top[:, None]
    # Contiguous from the peak outwards, on both sides, and falling: a
    # second rise (a chamfer's two edges, a burnt patch next to the bore)
    # ends the hump, so two edges are never fitted as one.
    with np.errstate(invalid="ignore"):
        rising = np.diff(values, axis=1) > PEAK_RISE * top[:, None]
    outward_right = above[:, span + 1:] & ~rising[:, span:]
    outward_left = above[:, :span] & ~rising[:, :span]
    right = np.cumprod(np.hstack([above[:, span:span + 1], outward_right]), axis=1).astype(bool)
    left = np.cumprod(np.hstack([above[:, span:span + 1], outward_left[:, ::-1]]),
                      axis=1)[:, ::-1].astype(bool)
    mask = np.hstack([left, right[:, 1:]]) & (top[:, None] > 0)
    result = np.full(len(peaks), np.nan)
    fit = (mask.sum(axis=1) - 1) * step >= BROAD_PEAK_PX
    if not fit.any():
        return result
    x = offsets[None, :] * step
    # Weighted by the squared slope (Guo's weights): the logarithm of a
    # value near half the peak's height carries twice the relative noise.
    w = np.where(mask[fit], values[fit], 0.0).astype(float) ** 2
    y = np.log(np.where(mask[fit], values[fit], 1.0))
    powers = [np.sum(w * x ** k, axis=1) for k in range(5)]
    normal = np.stack([np.stack(powers[r:r + 3], axis=1) for r in range(3)], axis=1)
    rhs = np.stack([np.sum(w * x ** k * y, axis=1) for k in range(3)], axis=1)
    good = np.abs(np.linalg.det(normal)) > 1e-9
    coef = np.full((len(w), 3), np.nan)
    coef[good] = np.linalg.solve(normal[good], rhs[good][:, :, None])[:, :, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = np.where(coef[:, 2] < 0, -coef[:, 1] / (2.0 * coef[:, 2]), np.nan)
    vertex[~(np.abs(vertex) <= span * step)] = np.nan
    result[fit] = vertex
    return result


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
    """Least-squares circle through points (``skimage.measure.CircleModel``):
    ``(center, radius)`` or None."""
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


def fit_circle_robust(points, tolerance, hypotheses=48, smooth=False):
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
    smooth : bool
        Finish with a soft-loss refinement (:func:`_smooth_refine`), so the
        centre moves continuously with the image; for final measurements.

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
        kept = residuals <= min(tolerance, max(5.0 * scatter, MIN_TOLERANCE))
        if np.array_equal(kept, inliers):
            break       # the same points again: the same circle
        inliers = kept
    if inliers.sum() < 6:
        return None
    if smooth:
        centre, radius = _smooth_refine(p, centre, radius, inliers, tolerance)
        residuals = np.abs(np.hypot(*(p - centre).T) - radius)
        inliers = residuals <= min(tolerance, max(5.0 * scatter, MIN_TOLERANCE))
        if inliers.sum() < 6:
            return None
    return centre + origin, radius, inliers


def _smooth_refine(points, centre, radius, inliers, tolerance):
    """Final geometric fit with a soft (Cauchy) loss over the near points.

    A hard inlier set makes the centre jump when one edge point crosses its
    cut-off; with a smooth loss each point's weight fades as its residual
    grows, so the centre moves continuously with the image.
    """
    near = np.abs(np.hypot(*(points - centre).T) - radius) <= 3.0 * tolerance
    if near.sum() < 6:
        return centre, radius
    pts = points[near]
    scale = max(MIN_TOLERANCE, 1.4826 * float(np.median(
        np.abs(np.hypot(*(points[inliers] - centre).T) - radius))))

    def residual(params):
        return np.hypot(pts[:, 0] - params[0], pts[:, 1] - params[1]) - params[2]

    def jacobian(params):
        # d(distance - r) / d(cx, cy, r); analytic, so no finite differences.
        dx, dy = pts[:, 0] - params[0], pts[:, 1] - params[1]
        d = np.maximum(np.hypot(dx, dy), 1e-9)
        return np.column_stack([-dx / d, -dy / d, -np.ones(len(pts))])

    fit = least_squares(residual, [centre[0], centre[1], radius], jac=jacobian,
                        loss="cauchy", f_scale=scale, method="trf", x_scale="jac",
                        max_nfev=50)
    if not fit.success or not np.all(np.isfinite(fit.x)) or fit.x[2] <= 0:
        return centre, radius
    return np.asarray(fit.x[:2]), float(fit.x[2])


def measure_bore(gray, noise, center, radius, quick=False, closed_hint=False,
                 glint_radius=0.0, face_radius=0.0):
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
    closed_hint : bool
        The ring structure (:mod:`.rings`) already showed the tip face to be
        a closed ring; used where the rays leave the frame before the face
        ends (a bore filling much of the frame).
    glint_radius : float
        Radius of a bright spot at the bore's centre that the ring structure
        saw (the ring light reflected by filament in the bore), px: the
        bore's dark level, edge and darkness are read outside it. Ignored
        above ``MAX_GLINT`` of the radius.
    face_radius : float
        Where the ring structure saw the tip face end, px. Rays are read
        past it when that is beyond ``RAY_LENGTH`` radii: over-exposure
        blooms a clipped face outwards (a 2.6 px bore's face at x3 exposure
        ended at 6.7 radii), and a face whose end is not read is no ring.

    Returns
    -------
    dict or None
        ``center``, ``radius``, ``completeness`` (fraction of rays whose edge
        fits the circle), ``snr`` (median bore-to-collar rise over noise),
        ``closure`` (fraction of those rays on which the brightness falls
        again beyond the collar and stays down for ``STAY_WINDOW`` radii: a
        collar is a ring, not a plate), ``face_width`` (median distance from
        the edge to that fall, px; NaN when fewer than 6 rays show it),
        ``rms`` (edge residual, px), ``clipped`` (fraction of those rays
        whose collar is clipped at white) and ``axis_ratio`` (1 for a
        circle, less when an ellipse fitted better); None when the candidate
        has no usable edge.
    """
    glint = glint_radius if 0.0 < glint_radius <= MAX_GLINT * radius else 0.0
    reach = max(RAY_LENGTH * radius, face_radius + (STAY_WINDOW + 0.5) * radius)
    rays = _sample_rays(gray, center, radius, quick, glint, reach)
    if rays is None:
        return None
    edge = _edge_per_ray(rays, noise, radius, quick, glint)
    n_view = int(edge.in_view.sum())
    if n_view < 0.5 * rays.n or \
            edge.good.sum() < max(6, MIN_COMPLETENESS * n_view):
        return None
    closure, face_widths = _closure(rays, edge, radius, closed_hint)
    if closure is None or closure < MIN_CLOSURE:
        return None
    if not _dark_inside(rays, edge, radius, glint):
        return None
    pts = np.column_stack([center[0] + np.cos(rays.angles) * edge.radius,
                           center[1] + np.sin(rays.angles) * edge.radius])[edge.good]
    fit = _fit_edge(pts, center, radius, quick)
    if fit is None:
        return None
    c, r, axis_ratio, inliers, residuals = fit
    used = np.flatnonzero(edge.good)[inliers]
    return {
        "center": (float(c[0]), float(c[1])),
        "radius": r,
        "axis_ratio": axis_ratio,
        "completeness": len(used) / n_view,
        "in_view": n_view / rays.n,
        "snr": float(np.median(edge.rise[used]) / noise),
        "closure": closure,
        "clipped": float(np.mean(edge.collar[used] >= CLIPPED_LEVEL)),
        "rms": float(np.sqrt(np.mean(residuals ** 2))),
        "face_width": float(np.median(face_widths)) if len(face_widths) >= 6 else math.nan,
    }


def _dark_inside(rays, edge, radius, glint):
    """Whether most of the candidate's inside lies below the edge level.

    The bore is a dark disc (a glint on the filament may light up to a
    quarter of it); a dark outline around brighter texture (text, foliage)
    is not a bore. Only rays whose edge level is known can say: a ray that
    leaves the frame before the face has none (a bore cut by the frame's
    edge).
    """
    within = rays.radii <= 0.8 * radius
    inside = rays.prof[:, within]
    seen = np.isfinite(inside) & np.isfinite(edge.thresholds)[:, None]
    if glint > 0:
        # The glint need not sit at the centre: the filament's highlight
        # lies where the light falls on it. Read the inside outside a disc
        # of the largest glint allowed round its brightest point.
        x = np.cos(rays.angles)[:, None] * rays.radii[within][None, :]
        y = np.sin(rays.angles)[:, None] * rays.radii[within][None, :]
        k = np.unravel_index(np.argmax(np.where(seen, inside, -np.inf)), inside.shape)
        seen &= np.hypot(x - x[k], y - y[k]) > max(glint, MAX_GLINT * radius)
    return bool(seen.any()) and \
        np.mean((inside < edge.thresholds[:, None])[seen]) >= MIN_DARK_FRACTION


def _sample_rays(gray, center, radius, quick, glint, reach):
    """Fine samples out to 2 radii for the edge; coarse ones out to
    ``reach`` px for the face's outer fall. None if nothing is in view."""
    coarse_step = float(np.clip(radius / 12.0, 0.25, 2.0))
    far_radii = np.arange(0.0, reach + coarse_step, coarse_step,
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
    # The bore's dark level: its inner half, or past a central glint.
    inner = prof[:, (radii >= glint) & (radii <= max(0.5 * radius, glint + 0.25 * radius))]
    if not np.isfinite(inner).any():
        return None
    return SimpleNamespace(n=n_rays, step=step, angles=angles, radii=radii, prof=prof,
                 far=far, far_radii=far_radii, coarse_step=coarse_step,
                 bore=float(np.nanmedian(inner)))


def _edge_per_ray(rays, noise, radius, quick, glint=0.0):
    """Each ray's collar, half-way level and sub-pixel edge radius."""
    prof, radii, bore, n_rays = rays.prof, rays.radii, rays.bore, rays.n
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
    face = np.where(np.isfinite(face), face, collar)
    if not quick and n_rays >= 16:
        # Neighbouring rays see nearly the same face; a circular median over
        # five of them keeps one ray's glint from moving its edge between the
        # two rims of a chamfer, so the centre does not jump with it.
        face = median_filter(face, size=5, mode="wrap")
    thresholds = bore + 0.5 * (face - bore)
    start = max(1, int(np.searchsorted(radii, max(0.3 * radius, glint))))
    stop = max(int(peak_idx.max()) + 1, start + 2)
    edge = _rise_nearest(prof[:, :stop], radii, thresholds, start, radius)
    # Where the collar is clipped at white its true level is unknown, and the
    # half-way crossing would move with it; the steepest point of the rise
    # does not (clipping only flattens the top).
    clipped = np.flatnonzero((collar >= CLIPPED_LEVEL) & np.isfinite(edge))
    if clipped.size:
        edge[clipped] = _steepest_rise(prof[clipped, :stop], radii, edge[clipped],
                                       rays.step)
    min_rise = np.maximum(MIN_RAY_SNR * noise,
                          np.minimum(MIN_RISE_LEVELS, DARK_FACE_RISE * collar))
    good = np.isfinite(edge) & (rise >= min_rise) & (edge <= radii[peak_idx])
    # Rays whose edge lies outside the frame tell nothing; at least half the
    # circle must be in view, and most of what is in view must show the edge
    # (a ray that shows it is in view, though the frame may end just after).
    in_view = np.isfinite(prof[:, min(np.searchsorted(radii, 1.05 * radius),
                                      len(radii) - 1)]) | good
    return SimpleNamespace(radius=edge, good=good, in_view=in_view, collar=collar,
                 rise=rise, thresholds=thresholds, peak=radii[peak_idx])


def _closure(rays, edge, radius, closed_hint):
    """Fraction of the edge's rays on which the face ends in a fall that
    stays down (a collar is a ring, not a plate), None if unknowable; and
    the face's width (edge to fall, px) on each of those rays."""
    far, far_radii = rays.far, rays.far_radii
    # Beyond the collar the light must drop well below the collar's level.
    beyond = far_radii[None, :] > edge.peak[:, None] + rays.coarse_step
    drop_level = (edge.collar - RING_DROP * edge.rise)[:, None]
    # Two samples in a row, so pixel noise alone does not fake a fall.
    below = far < drop_level
    fell = below.copy()
    fell[:, :-1] &= below[:, 1:]
    fell[:, -1] = False
    fell &= beyond
    # The tip face ends at an edge, beyond which lies the darker cone or the
    # background: the fall is a step that stays down. A dip in a textured or
    # unevenly lit plate around a screw hole comes back up. Judged over
    # STAY_WINDOW bore radii past the fall: farther out a real nozzle's
    # body may be as bright as its face again (a narrow cone, clipped at
    # white when over-exposed).
    after = np.cumsum(fell, axis=1) > 0
    first_fall = far_radii[np.argmax(fell, axis=1)]
    window = far_radii[None, :] <= (first_fall + STAY_WINDOW * radius)[:, None]
    seen_after = after & window & np.isfinite(far)
    stays = (below & seen_after).sum(axis=1) >= MIN_STAYS_DOWN * seen_after.sum(axis=1)
    closed = np.any(fell, axis=1) & stays
    # A ray that leaves the frame before it could drop tells nothing: only
    # one read out to its end (RAY_LENGTH radii, past the widest tip faces)
    # shows a face that does not end. (Judging at 3 radii lost every bore
    # whose 3-4.6 radii wide face met the frame's edge: 80-100 px bores
    # under a ring light at 640x480.)
    known = closed | np.isfinite(far[:, -1])
    good = edge.good
    widths = (first_fall - edge.radius)[good & closed]
    if known[good].sum() < 0.25 * good.sum():
        return (1.0 if closed_hint else None), widths
    return float(closed[good].sum() / known[good].sum()), widths


def _fit_edge(pts, center, radius, quick):
    """Circle (or ellipse) through the edge points:
    (center, radius, axis_ratio, inliers, residuals) or None."""
    tolerance = max(0.35, 0.04 * radius)
    fit = fit_circle_robust(pts, tolerance, smooth=not quick)
    if fit is None:
        return None
    c, r, inliers = fit
    if not (0.5 * radius <= r <= 2.0 * radius) or \
            math.hypot(c[0] - center[0], c[1] - center[1]) > radius:
        return None     # the edge points belong to something else
    residuals = np.hypot(*(pts[inliers] - c).T) - r
    axis_ratio = 1.0
    if not quick and _seen_all_round(pts, c):
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
    return c, r, axis_ratio, inliers, residuals


def _seen_all_round(points, center, max_gap=ELLIPSE_MAX_GAP):
    """Whether edge points surround ``center`` with no angular gap wider
    than ``max_gap`` (radians).

    An ellipse has two more parameters than a circle; on an arc (a bore cut
    by the frame, or a side hidden by ooze or a ragged rim) they trade off
    against its centre, and refitting it to the points within tolerance
    lets it drift onto another set of edge points: the centre of a 245 px
    bore cut top and bottom moved 7-12 px between near-identical frames
    where the circle's moved 0.1-3. Seen all round, opposite sides pin the
    centre down.
    """
    angles = np.sort(np.arctan2(points[:, 1] - center[1], points[:, 0] - center[0]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
    return float(gaps.max()) <= max_gap


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


def score_measurement(m):
    """Confidence 0..1 that a measurement is a bore.

    A tip face clipped at white does not lower it: clipping makes the
    bore's edge plainer, not doubtful, and the edge is then placed at the
    steepest point of the rise. (Cutting the score by 30 % for a clipped
    face put oozed or defocused bores under ``MIN_SCORE`` and kept every
    over-exposed frame from ending the search early.) What clipping costs
    in precision shows in the spread of the frames a measurement averages.
    """
    snr_term = 1.0 - math.exp(-m["snr"] / 12.0)
    closure_term = m["closure"]
    fit_term = 1.0 / (1.0 + (m["rms"] / max(0.3, 0.03 * m["radius"])) ** 2)
    return (m["completeness"] * snr_term * (0.5 + 0.5 * closure_term)
            * (0.5 + 0.5 * fit_term))
