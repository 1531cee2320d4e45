"""Many per-frame bore centres → one: the median of the frames that agree.

A pure function; how many frames to look at and for how long is the
service's business.
"""

import math
import typing

import numpy as np


class ConsensusResult(typing.NamedTuple):
    """The agreed centre.

    Attributes
    ----------
    center : (float, float)
        Coordinate-wise median of the agreeing centres.
    used : list of int
        Indices (into the input) of the centres that agreed.
    spread : float
        Largest distance of a used centre from ``center``, px.
    """

    center: tuple
    used: list
    spread: float


def _within(points, center, tolerance):
    return np.flatnonzero(np.hypot(points[:, 0] - center[0],
                                   points[:, 1] - center[1]) <= tolerance)


def consensus(centers, tolerance, needed):
    """Median of the centres that agree within ``tolerance``.

    The seed is the centre with the most neighbours within ``tolerance``
    (ties: the one closest to its neighbours); then the median of the
    agreeing set and the set itself are refined until they are consistent,
    so every used centre lies within ``tolerance`` of the result.

    Parameters
    ----------
    centers : sequence of (float, float)
        Per-frame bore centres, px.
    tolerance : float
        Largest distance, px, of an agreeing centre from the result.
    needed : int
        How many centres must agree.

    Returns
    -------
    ConsensusResult or None
        None when fewer than ``needed`` centres agree (or none were given).
    """
    if tolerance <= 0 or not math.isfinite(tolerance):
        raise ValueError("tolerance must be a positive number")
    points = np.asarray(list(centers), dtype=float).reshape(-1, 2)
    if len(points) == 0 or len(points) < needed:
        return None
    if not np.all(np.isfinite(points)):
        raise ValueError("centres must be finite numbers")
    dist = np.hypot(points[:, None, 0] - points[None, :, 0],
                    points[:, None, 1] - points[None, :, 1])
    close = dist <= tolerance
    counts = close.sum(axis=1)
    closeness = np.where(close, dist, 0.0).sum(axis=1)
    seed = min(range(len(points)), key=lambda i: (-counts[i], closeness[i], i))
    used = np.flatnonzero(close[seed])
    center = np.median(points[used], axis=0)
    for _ in range(len(points) + 1):
        again = _within(points, center, tolerance)
        if again.size == 0:
            break
        new_center = np.median(points[again], axis=0)
        if np.array_equal(again, used) and np.allclose(new_center, center):
            break
        used, center = again, new_center
    # The median of the final set may move a member out of tolerance.
    used = _within(points, center, tolerance)
    if used.size < max(int(needed), 1):
        return None
    center = np.median(points[used], axis=0)
    spread = float(np.max(np.hypot(points[used, 0] - center[0],
                                   points[used, 1] - center[1])))
    return ConsensusResult((float(center[0]), float(center[1])),
                           [int(i) for i in used], spread)
