"""The nested rings of a nozzle seen from below, from one radial profile.

From the bore's centre outwards a nozzle is a staircase of rings: the dark
bore, the bright tip face (often clipped at white), the cone or chamfer
(often dark), the hex or heater block. Averaged round the circle (a median,
so glints, dirt and ooze on a few rays drop out) these become a 1-D profile
of brightness against radius, whose significant minima and maxima are the
rings. The bore is the dark core at radius 0 up to the first significant
rise; the tip face is the bright ring that rise reaches. Everything here is
relative to the profile itself (its own levels and contrast), so exposure,
clipping and the camera's gain do not matter.
"""

import dataclasses
import math

import cv2
import numpy as np

from ktamv_helper.detection.edges import MAX_GLINT

# Rays averaged into the profile: enough that a glint or a burnt patch
# covering a few of them cannot move the median.
PROFILE_RAYS = 48
# A minimum or maximum is significant when the profile moves away from it by
# this fraction of the profile's own range (its 2nd..98th percentile) ...
SIGNIFICANT_FRACTION = 0.15
# ... and by at least this many times the noise of the median profile.
SIGNIFICANT_SNR = 4.0
# The tip face ends within this many bore radii (a 0.4 mm nozzle's face is
# ~1 mm across, 2.5 radii, but flat faces reach ~5 and a 0.25 mm nozzle's
# ~8).
FACE_SPAN = 8.0
# Samples of a long profile: read out to FAMILY_SPAN (10) bore radii, that
# is 40 per bore radius, several across even the narrowest ring (a thin
# tip face is ~0.4 bore radii wide).
MAX_PROFILE_SAMPLES = 400
# A sample of the profile counts when at least this fraction of its rays
# lies inside the frame (a big bore may reach past the frame's edge).
MIN_RAYS_SEEN = 0.3


@dataclasses.dataclass(frozen=True)
class Rings:
    """The ring structure round one centre.

    Attributes
    ----------
    bore_radius : float
        Where the profile first crosses half-way from the dark core up to
        the first bright ring, px.
    bore_level, face_level : float
        Grey levels of the dark core and of the first bright ring.
    radii : tuple of float
        Half-way crossings between successive significant extrema, inside
        out (the first is ``bore_radius``).
    face_closed : bool
        The bright ring is followed within ``FACE_SPAN`` bore radii by a
        significant fall (it is a ring, not a plate) or runs out of the frame.
    glint_radius : float
        Where a bright spot at the centre (a glint on filament in the bore)
        falls half-way to the dark core, px; 0 when the core is dark to the
        centre.
    """

    bore_radius: float
    bore_level: float
    face_level: float
    radii: tuple
    face_closed: bool
    glint_radius: float = 0.0


def radial_profile(gray, center, max_radius, step=None, rays=PROFILE_RAYS):
    """Median brightness against radius round ``center``.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    center : (float, float)
    max_radius : float
        Outermost radius sampled, px.
    step : float, optional
        Radius step, px; by default 0.5 px, coarser for long profiles (at most
        ``MAX_PROFILE_SAMPLES``).
    rays : int

    Returns
    -------
    radii, profile : ndarray of float32
        ``profile`` is NaN where fewer than ``MIN_RAYS_SEEN`` of the rays lie
        in the frame.
    """
    if step is None:
        step = max(0.5, max_radius / MAX_PROFILE_SAMPLES)
    radii = np.arange(0.0, max_radius + step, step, dtype=np.float32)
    angles = np.arange(rays, dtype=np.float32) * np.float32(2 * math.pi / rays)
    map_x = (center[0] + np.cos(angles)[:, None] * radii[None, :]).astype(np.float32)
    map_y = (center[1] + np.sin(angles)[:, None] * radii[None, :]).astype(np.float32)
    height, width = gray.shape
    samples = cv2.remap(gray, map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    outside = (map_x < -0.5) | (map_x > width - 0.5) | (map_y < -0.5) | (map_y > height - 0.5)
    samples[outside] = np.nan
    profile = _column_median(samples, outside)
    profile[(~outside).mean(axis=0) < MIN_RAYS_SEEN] = np.nan
    return radii, profile


def _column_median(samples, missing):
    """Median of each column over its non-missing rows (NaN if none).

    Sorting puts the NaNs last, so the median is picked by each column's own
    count; several times faster than ``np.nanmedian``.
    """
    if not missing.any():
        return np.median(samples, axis=0)
    ordered = np.sort(samples, axis=0)
    count = (~missing).sum(axis=0)
    cols = np.arange(samples.shape[1])
    lo = np.maximum((count - 1) // 2, 0)
    hi = np.maximum(count // 2, 0)
    out = 0.5 * (ordered[lo, cols] + ordered[np.minimum(hi, len(samples) - 1), cols])
    out[count == 0] = np.nan
    return out.astype(np.float32)


def significant_extrema(profile, threshold):
    """Alternating significant minima and maxima of a 1-D profile.

    A zig-zag walk: the current extreme is confirmed once the profile has
    moved away from it by ``threshold`` in the other direction. NaNs end the
    walk (the profile left the frame).

    Returns
    -------
    list of (index, value, kind)
        ``kind`` is -1 for a minimum, +1 for a maximum; the last extreme is
        included unconfirmed, as the profile's end.
    """
    finite = np.isfinite(profile)
    end = int(np.argmin(finite)) if not finite.all() else len(profile)
    if end < 3:
        return []
    p = profile[:end]
    out = []
    lo_i = hi_i = 0
    direction = 0           # 0 unknown, +1 rising (seeking a max), -1 falling
    for i in range(1, end):
        v = p[i]
        if direction >= 0 and v > p[hi_i]:
            hi_i = i
        if direction <= 0 and v < p[lo_i]:
            lo_i = i
        if direction >= 0 and p[hi_i] - v >= threshold and (direction > 0 or hi_i > lo_i
                                                             or p[hi_i] - p[0] >= threshold):
            if direction == 0:
                out.append((lo_i, float(p[lo_i]), -1)) if lo_i < hi_i else None
            out.append((hi_i, float(p[hi_i]), +1))
            direction, lo_i = -1, i
        elif direction <= 0 and v - p[lo_i] >= threshold:
            if direction == 0 and hi_i < lo_i:
                out.append((hi_i, float(p[hi_i]), +1))
            out.append((lo_i, float(p[lo_i]), -1))
            direction, hi_i = +1, i
    if direction > 0:
        out.append((hi_i, float(p[hi_i]), +1))
    elif direction < 0:
        out.append((lo_i, float(p[lo_i]), -1))
    return out


def _crossing(radii, profile, start, stop, level):
    """First radius in [start, stop] where the profile crosses ``level``."""
    p = profile[start:stop + 1]
    rising = p[-1] > p[0]
    past = p >= level if rising else p <= level
    k = int(np.argmax(past))
    if k == 0:
        return float(radii[start])
    a, b = p[k - 1], p[k]
    frac = 0.0 if b == a else float(np.clip((level - a) / (b - a), 0.0, 1.0))
    return float(radii[start + k - 1] + frac * (radii[start + k] - radii[start + k - 1]))


def find_rings(gray, center, max_radius, noise, min_radius=0.0):
    """The ring structure round ``center``, or None if it has no dark core.

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    center : (float, float)
    max_radius : float
        How far out to look, px.
    noise : float
        Pixel noise, grey levels.
    min_radius : float
        Rises nearer the centre than this are not a bore's edge (px).

    Returns
    -------
    Rings or None
        None when the profile does not start with a dark core that rises
        significantly to a bright ring.
    """
    radii, profile = radial_profile(gray, center, max_radius)
    finite = profile[np.isfinite(profile)]
    if finite.size < 4:
        return None
    lo, hi = np.percentile(finite, [2, 98])
    threshold = max(SIGNIFICANT_FRACTION * (hi - lo),
                    SIGNIFICANT_SNR * noise / math.sqrt(PROFILE_RAYS), 2.0)
    extrema = significant_extrema(profile, threshold)
    # The first extreme must be the dark core; tolerate a glint inside the
    # bore (filament in it mirrors the ring light) by starting from the
    # first minimum. The glint need not sit at the bore's centre, so the
    # median profile may peak a few px out; it is judged against the bore
    # radius below.
    glint = None
    if extrema and extrema[0][2] > 0:
        glint, extrema = extrema[0], extrema[1:]
    if len(extrema) < 2 or extrema[0][2] > 0:
        return None
    (i_core, core, _), (i_face, face, _) = extrema[0], extrema[1]
    if face - core < threshold:
        return None
    crossings = []
    for (i0, v0, _), (i1, v1, _) in zip(extrema, extrema[1:]):
        crossings.append(_crossing(radii, profile, i0, i1, 0.5 * (v0 + v1)))
    bore_radius = crossings[0]
    if bore_radius < min_radius:
        return None
    if glint is not None and radii[glint[0]] >= max(min_radius, MAX_GLINT * bore_radius):
        return None     # a bright ring round a dark one (a letter "o"), no glint
    glint_radius = 0.0
    if glint is not None:
        glint_radius = _crossing(radii, profile, glint[0], i_core, 0.5 * (glint[1] + core))
    # The face must end within FACE_SPAN bore radii: in a fall to the cone,
    # or at the frame's edge (then nothing is known beyond it).
    reach = radii <= FACE_SPAN * bore_radius
    closed = ((len(crossings) > 1 and crossings[1] <= FACE_SPAN * bore_radius)
              or not np.isfinite(profile[reach]).all())
    return Rings(bore_radius=bore_radius, bore_level=core, face_level=face,
                 radii=tuple(round(r, 2) for r in crossings), face_closed=closed,
                 glint_radius=round(glint_radius, 2))


def edge_width(gray, center, radius, face_radius, step=0.25):
    """Width of a bore's edge: where the median profile rises from 25 % to
    75 % of the way from the dark core to the tip face's peak, px.

    Defocus spreads the edge over this width (1.35 sigma for a Gaussian
    blur) and, where the tip face is narrow, also pulls the half-way edge
    inwards; the bore's true radius is known only to within about this
    much (measured on rendered nozzles: radius + width was never below the
    true radius for blur up to 4 px).

    Parameters
    ----------
    gray : ndarray of uint8, shape (H, W)
    center : (float, float)
    radius : float
        Measured bore radius, px.
    face_radius : float
        Outer radius of the tip face (the rings' second radius), px.
    step : float
        Radius step of the profile, px.

    Returns
    -------
    float
        0.0 when the profile does not rise from the core to the face.
    """
    reach = max(face_radius, 1.5 * radius)
    radii, profile = radial_profile(gray, center, reach, step=step)
    inner = np.isfinite(profile) & (radii <= reach)
    if inner.sum() < 4:
        return 0.0
    # The rise is read outwards from the darkest point inside the bore to
    # the brightest beyond it: a glint in the bore's middle is brighter
    # than the 25 % level (read from the centre, it made a sharp 9.5 px
    # bore's edge 10 px wide) and may outshine the face.
    inside = inner & (radii <= radius)
    if not inside.any():
        return 0.0
    k_core = int(np.argmin(np.where(inside, profile, np.inf)))
    k_face = k_core + int(np.argmax(np.where(inner, profile, -np.inf)[k_core:]))
    core = profile[k_core]
    rise = profile[k_face] - core
    if k_face - k_core < 2 or rise <= 0:
        return 0.0
    seg = profile[k_core:k_face + 1]
    k25 = int(np.argmax(seg >= core + 0.25 * rise))
    k75 = int(np.argmax(seg >= core + 0.75 * rise))
    return float(max(radii[k_core + k75] - radii[k_core + k25], 0.0))
