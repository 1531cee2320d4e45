"""Places in a frame that may hold a nozzle bore: dark round islands."""

import math

import cv2
import numpy as np

from ktamv_helper.detection.frame import BLANK_RANGE, histogram_levels

# Longest side of the copy searched for candidates (px). Verification and
# refinement always run on the full frame.
CANDIDATE_LONG_SIDE = 320
# Candidates are found down to this bore radius in the search copy (px).
MIN_SEARCH_RADIUS = 2.0
# Threshold levels, as fractions of the frame's dark..bright range: closer
# together at the dark end, where bores are, and a few in the upper quarter:
# in an over-exposed frame everything but the cone may lie above 0.72 of
# the range, the bore's core too (a 4 px bore at x3 exposure: core 183,
# clipped face 255, cone 120), and only a level between core and face makes
# it an island.
THRESHOLD_FRACTIONS = np.append(np.linspace(0.2, 0.85, 10) ** 2, [0.8, 0.875, 0.95])
# Pixels of the smallest island looked at: a 3x3 block less a corner, the
# smallest whose outline can differ from round (2x2 or 2x3 blocks are as
# "round" as any speck of noise). A 2.3 px bore blurred by 1.3 px is such
# an island at the one level between its core and its dim face.
SMALLEST_ISLAND = 8
# Most candidates kept per search copy, the most persistent first.
MAX_CANDIDATES = 12
# An island cut by the frame's edge is a candidate when the part of its
# outline inside the frame is a circular arc: at least this fraction of
# the circle's rim (the measurement needs half of it in view) and within
# this fraction of the radius of the circle fitted to it (RMS).
MIN_ARC = 0.5
MAX_ARC_RMS = 0.1


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
    lo, hi = (float(level) for level in histogram_levels(small, (0.01, 0.9995)))
    if hi - lo < BLANK_RANGE:
        return []
    r_lo = max(min_radius / sx * 0.6, 1.0)
    r_hi = max_radius / sx * 1.3
    # Fewer than SMALLEST_ISLAND pixels cannot show whether an island is round.
    area_lo, area_hi = max(math.pi * r_lo * r_lo, SMALLEST_ISLAND), math.pi * r_hi * r_hi
    p_lo, p_hi = shortest_outline(area_lo), 2 * math.pi * r_hi * 1.3
    found = []
    for fraction in THRESHOLD_FRACTIONS:
        _, mask = cv2.threshold(small, lo + fraction * (hi - lo), 255, cv2.THRESH_BINARY_INV)
        # Outer boundaries of the dark islands are the top level of RETR_CCOMP.
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            continue
        # Only top-level islands of a bore's perimeter are looked at; a
        # textured frame has tens of thousands of specks, filtered at once.
        lengths = np.fromiter(map(len, contours), int, len(contours))
        for i in np.flatnonzero((hierarchy[0][:, 3] == -1) & (lengths >= p_lo)
                                & (lengths <= p_hi)):
            contour = contours[i]
            x, y, w, h = cv2.boundingRect(contour)
            if x <= 0 or y <= 0 or x + w >= sw or y + h >= sh:
                # Cut by the frame's edge (a nozzle partly in view): the
                # island's moments would put the centre wrong, the circle
                # through its arc does not.
                disc = _cut_disc(contour, sw, sh, r_lo, r_hi)
                if disc is not None:
                    found.append(((disc[0] + 0.5) * sx - 0.5, (disc[1] + 0.5) * sy - 0.5,
                                  disc[2] * sx, True))
                continue
            disc = _whole_disc(contour, area_lo, area_hi)
            if disc is not None:
                found.append(((disc[0] + 0.5) * sx - 0.5, (disc[1] + 0.5) * sy - 0.5,
                              disc[2] * sx, False))
    return _merge_islands(found, sx)


def shortest_outline(area):
    """Fewest outline points (8-connected, every pixel) an island of
    ``area`` pixels can have.

    By Pick's theorem the island's pixel count is the area of the polygon
    through its outline's pixel centres plus half the outline plus one; that
    polygon's perimeter is at most sqrt(2) per outline point, so its area is
    at most n^2 / (2 pi). Islands with shorter outlines are smaller than
    ``area`` and are dropped before their moments are taken; a cut-off of
    2 pi r (the outline of a continuous circle) also dropped the 8-pixel
    island of a blurred 2.3 px bore, whose equivalent radius is 1.6 px.
    """
    return math.pi * (math.sqrt(0.25 + 2.0 * max(area - 1.0, 0.0) / math.pi) - 0.5)


def _whole_disc(contour, area_lo, area_hi):
    """``(u, v, r)`` of an island inside the frame from its moments, or
    None when it is elongated, of the wrong size, or not compact."""
    x, y, w, h = cv2.boundingRect(contour)
    if max(w, h) > 1.6 * min(w, h) + 1:
        return None     # elongated
    m = cv2.moments(contour)
    # Pixel count of the island: polygon through the boundary pixel
    # centres plus the half pixel around it.
    area = m["m00"] + 0.5 * len(contour) + 1.0
    if not (area_lo <= area <= area_hi and 0.55 * w * h <= area <= 0.98 * w * h + 2):
        return None     # not round and compact (a disc fills pi/4 of its box)
    if m["m00"] > 0:
        cu, cv_ = m["m10"] / m["m00"], m["m01"] / m["m00"]
    else:
        cu, cv_ = x + 0.5 * (w - 1), y + 0.5 * (h - 1)
    return cu, cv_, math.sqrt(area / math.pi)


def _cut_disc(contour, width, height, r_lo, r_hi):
    """``(u, v, r)`` of the disc whose arc an island cut by the frame's
    edge shows, or None when that part of its outline is no circular arc
    covering at least ``MIN_ARC`` of the rim round a centre in the frame."""
    # Cheap shape tests first (a textured frame has tens of islands on its
    # edges): with its centre in the frame, a cut disc shows at least its
    # radius along each axis and at most its diameter, and fills at least
    # pi/4 of its bounding box, as a half or quarter disc does (0.55 allows
    # for a threshold's ragged outline, as for whole islands).
    _, _, w, h = cv2.boundingRect(contour)
    if max(w, h) > 2 * min(w, h) + 2 or max(w, h) > 2 * r_hi + 2 or \
            cv2.contourArea(contour) + 0.5 * len(contour) + 1.0 < 0.55 * w * h:
        return None
    points = contour[:, 0, :].astype(float)
    arc = points[(points[:, 0] > 0) & (points[:, 1] > 0) &
                 (points[:, 0] < width - 1) & (points[:, 1] < height - 1)]
    # Its radius is at least half the box's longer side, which bounds the
    # arc's length from below before any fit.
    if len(arc) < max(8, MIN_ARC * 0.9 * math.pi * max(2 * r_lo, max(w, h) - 1)):
        return None
    fit = _algebraic_circle(arc)
    if fit is None:
        return None
    u, v, r = fit
    # An 8-connected outline has about 0.9 points per px of arc length.
    if not (r_lo <= r <= r_hi and 0 <= u < width and 0 <= v < height) or \
            len(arc) < MIN_ARC * 0.9 * 2 * math.pi * r:
        return None
    rms = math.sqrt(float(np.mean((np.hypot(arc[:, 0] - u, arc[:, 1] - v) - r) ** 2)))
    return (u, v, r) if rms <= MAX_ARC_RMS * r + 0.5 else None


def _algebraic_circle(points):
    """``(u, v, r)`` of the algebraic least-squares circle through points
    (the fit ``skimage.measure.CircleModel`` makes, without its per-call
    overhead: 20 against 67 us, and hundreds of edge islands are screened
    per frame), or None when the points are collinear."""
    x, y = points[:, 0], points[:, 1]
    design = np.column_stack([x, y, np.ones_like(x)])
    (p, q, s), _, rank, _ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
    u, v = 0.5 * p, 0.5 * q
    r2 = s + u * u + v * v
    return (u, v, math.sqrt(r2)) if rank == 3 and r2 > 0 else None


def _merge_islands(found, pixel):
    """The same island seen at several levels, once, with how often.

    Largest first, each island joins the first kept one it lies on (within
    half the larger radius plus a pixel, radii within 2x), else is kept. The
    comparison runs on arrays: a textured 1080p frame has ~1000 islands.
    The most persistent come first; of equal persistence, whole islands
    before ones cut by the frame's edge (less of them is seen), so a small
    whole bore is not crowded out of ``MAX_CANDIDATES``.
    """
    if not found:
        return []
    islands = sorted(found, key=lambda c: -c[2])
    kept = np.zeros((len(islands), 3))
    cut = np.zeros(len(islands), bool)
    counts = np.zeros(len(islands), int)
    k = 0
    for u, v, r, is_cut in islands:
        if k:
            near = np.hypot(kept[:k, 0] - u, kept[:k, 1] - v) < \
                0.5 * np.maximum(r, kept[:k, 2]) + pixel
            ratio = r / kept[:k, 2]
            hit = np.flatnonzero(near & (ratio > 0.5) & (ratio < 2.0))
            if hit.size:
                counts[hit[0]] += 1
                continue
        kept[k] = u, v, r
        cut[k] = is_cut
        counts[k] = 1
        k += 1
    order = np.lexsort((cut[:k], -counts[:k]))[:MAX_CANDIDATES]
    return [(float(kept[i, 0]), float(kept[i, 1]), float(kept[i, 2]), int(counts[i]))
            for i in order]


# Gradient voting works on a pyramid; at each level it votes for circles of
# VOTE_BAND level pixels, so successive levels (factor 2) overlap and every
# radius from the smallest to the largest is covered twice, without gaps.
VOTE_BAND = (2.5, 7.0)
# Edge pixels: gradient at least this many times its noise (Sobel of white
# noise has a per-axis standard deviation of 0.43 sigma after the 1/8 scale
# used here) ...
EDGE_SNR = 4.0
# ... and at least this many grey levels per pixel (JPEG flattens noise, so
# the noise estimate alone can be too low).
MIN_EDGE_LEVELS = 1.5
# Radii voted for are this far apart (level px): wider steps would let a
# circle between two of them scatter its votes beyond the 3x3 sum.
RADIUS_STEP = 1.0
# At most this many edge pixels vote per level, the strongest: caps the cost
# on textured frames without dropping a whole circle's edge.
MAX_VOTERS = 12000
# A peak must gather votes worth this fraction of one whole circle's edge
# (a bore half hidden by ooze still gathers about half).
MIN_VOTES = 0.3
# Peaks kept per level, strongest first.
PEAKS_PER_LEVEL = 6


def _pyramid(gray, finest_scale, coarsest_long_side=24):
    """Grey copies at scales finest_scale, finest_scale/2, ... (float32)."""
    height, width = gray.shape
    if finest_scale < 1.0:
        size = (max(8, round(width * finest_scale)), max(8, round(height * finest_scale)))
        level = cv2.resize(gray, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    else:
        level = gray.astype(np.float32)
    levels = [(level, level.shape[1] / width)]
    while max(levels[-1][0].shape) >= 2 * coarsest_long_side:
        level = cv2.pyrDown(levels[-1][0])
        levels.append((level, level.shape[1] / width))
    return levels


def vote_dark_circles(level, noise):
    """Votes for the centres of dark discs in one pyramid level.

    Every edge pixel votes at the points ``r`` pixels against its gradient
    (gradients point from dark to bright, so from a dark disc's edge they
    point away from its centre), for each radius of ``VOTE_BAND``; each vote
    weighs ``1 / (2 pi r)``, so a whole circle of any radius gathers about 1.
    Concentric dark-inside edges (bore, the cone inside the body) all vote
    for the same centre.

    Parameters
    ----------
    level : ndarray of float32, shape (H, W)
    noise : float
        Pixel noise of this level, grey levels.

    Returns
    -------
    ndarray of float32, shape (H, W)
        The vote map, summed over 3x3 pixels.
    """
    height, width = level.shape
    gx = cv2.Sobel(level, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(level, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    # Canny thins each edge to one pixel, so a circle's vote does not grow
    # with its blur; its hysteresis keeps weak stretches of a strong edge.
    high = max(EDGE_SNR * 0.43 * math.sqrt(2.0) * noise, MIN_EDGE_LEVELS)
    edges = cv2.Canny(np.clip(level, 0, 255).astype(np.uint8), 4.0 * high,
                      8.0 * high, L2gradient=True)
    idx = np.flatnonzero(edges)
    mag = cv2.magnitude(gx, gy).ravel()
    if idx.size > MAX_VOTERS:
        idx = idx[np.argpartition(mag[idx], -MAX_VOTERS)[-MAX_VOTERS:]]
    votes = np.zeros(height * width, np.float32)
    if idx.size == 0:
        return votes.reshape(height, width)
    m = np.maximum(mag[idx], 1e-6)
    ux, uy = gx.ravel()[idx] / m, gy.ravel()[idx] / m
    px, py = (idx % width).astype(np.float32), (idx // width).astype(np.float32)
    radii = np.arange(VOTE_BAND[0], VOTE_BAND[1] + 0.01, RADIUS_STEP, dtype=np.float32)
    cx = np.rint(px[:, None] - ux[:, None] * radii[None, :]).astype(np.int32)
    cy = np.rint(py[:, None] - uy[:, None] * radii[None, :]).astype(np.int32)
    ok = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    weights = np.broadcast_to(1.0 / (2.0 * math.pi * radii), cx.shape)
    votes += np.bincount((cy * width + cx)[ok], weights=weights[ok],
                         minlength=height * width).astype(np.float32)
    votes = votes.reshape(height, width)
    # Votes of one circle scatter over about a pixel (rounding, blur): sum
    # them over 3x3 so the peak holds them all.
    return cv2.boxFilter(votes, -1, (3, 3), normalize=False,
                         borderType=cv2.BORDER_CONSTANT)


def _peaks(votes, count):
    """Strongest local maxima of a vote map: (x, y, value)."""
    dilated = cv2.dilate(votes, np.ones((5, 5), np.uint8))
    ys, xs = np.nonzero((votes >= dilated) & (votes >= MIN_VOTES))
    if xs.size == 0:
        return []
    order = np.argsort(-votes[ys, xs])[:count]
    return [(float(xs[i]), float(ys[i]), float(votes[ys[i], xs[i]])) for i in order]


def vote_candidates(gray, noise, min_radius, max_radius):
    """Centres of dark round things at every scale, by gradient voting.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    noise : float
        Pixel noise of the full frame, grey levels.
    min_radius, max_radius : float
        Radii to look for, full-frame px.

    Returns
    -------
    list of (u, v, radius_low, radius_high, votes)
        Full-frame centre, the band of radii the level voted for and the
        vote strength (about 1 for a whole circle), coarse levels first.
    """
    finest = min(1.0, VOTE_BAND[0] / max(min_radius, 1e-3))
    found = []
    for level, scale in _pyramid(gray, finest):
        r_lo, r_hi = VOTE_BAND[0] / scale, VOTE_BAND[1] / scale
        if r_hi < min_radius or r_lo > max_radius:
            continue
        # Downscaling averages the noise of the pixels merged.
        votes = vote_dark_circles(level, noise * scale)
        for x, y, value in _peaks(votes, PEAKS_PER_LEVEL):
            found.append(((x + 0.5) / scale - 0.5, (y + 0.5) / scale - 0.5,
                          r_lo, r_hi, value))
    found.sort(key=lambda c: -c[2])   # coarse (large radii) first
    return found
