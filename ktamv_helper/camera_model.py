"""Fit the affine map from image pixels to machine millimetres.

Calibration moves the toolhead to known XY positions and detects where the
nozzle appears; this module fits ``x = a*u + b*v + c``, ``y = d*u + e*v + f``
to those pairs, robustly (RANSAC, then least squares on the inliers), and
refuses fits that cannot be a real camera. The result is the
``fit_camera_model`` reply documented in ``docs/protocol.md``.
"""

import math

import numpy as np

from ktamv_helper.errors import HelperError
from ktamv_helper.limits import MAX_MM_PER_PX, MIN_MM_PER_PX
# An inlier may be this many times ``max_residual`` off the model: the RMS
# limit still applies to the inliers afterwards.
INLIER_FACTOR = 2.5
# Points whose spread across their main direction is below this fraction of
# the spread along it are treated as lying on a line.
MIN_SPREAD_RATIO = 0.05


def _as_points(values, name):
    try:
        points = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise HelperError("invalid_params",
                          f"The calibration {name} values must be pairs of numbers.")
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise HelperError("invalid_params",
                          f"The calibration {name} values must be pairs of numbers.")
    if not np.all(np.isfinite(points)):
        raise HelperError("invalid_params",
                          f"The calibration {name} values contain a number that is "
                          f"not finite (NaN or infinity).")
    return points


def spread_ratio(points):
    """Minor over major principal spread of a point set (0 = on a line).

    Parameters
    ----------
    points : ndarray, shape (N, 2)

    Returns
    -------
    minor_over_major : float
    minor_rms : float
        RMS distance of the points from their best-fit line.
    """
    centred = points - points.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False)
    if sv[0] <= 0:
        return 0.0, 0.0
    return float(sv[1] / sv[0]), float(sv[1] / math.sqrt(len(points)))


def _check_geometry(uv, xy, what):
    ratio_uv, _ = spread_ratio(uv)
    ratio_xy, _ = spread_ratio(xy)
    if ratio_uv < MIN_SPREAD_RATIO or ratio_xy < MIN_SPREAD_RATIO:
        raise HelperError(
            "fit_rejected",
            f"The {what}calibration points lie (almost) on a line or on one spot "
            f"(pixel spread ratio {ratio_uv:.3f}, machine spread ratio "
            f"{ratio_xy:.3f}); the camera model needs moves in both X and Y. Check "
            f"that the nozzle stayed in view and was detected at each position.",
            {"spread_ratio_uv": ratio_uv, "spread_ratio_xy": ratio_xy})


def _least_squares(uv, xy):
    """Affine ``[[a, b, c], [d, e, f]]`` minimising squared mm residuals."""
    design = np.column_stack([uv, np.ones(len(uv))])
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    return coef.T


def _residuals(params, uv, xy):
    predicted = uv @ params[:, :2].T + params[:, 2]
    return np.hypot(*(predicted - xy).T)


def fit_camera_model(xy, uv, max_residual=0.02):
    """Fit the pixel → machine map from calibration pairs.

    Parameters
    ----------
    xy : array_like, shape (N, 2)
        Toolhead positions, mm.
    uv : array_like, shape (N, 2)
        Where the nozzle appeared at each position, px.
    max_residual : float
        Largest accepted RMS residual of the inliers, mm.

    Returns
    -------
    dict
        ``matrix``, ``offset``, ``mm_per_px``, ``scale_uv``, ``rotation_deg``,
        ``mirrored``, ``rms_mm``, ``max_residual_mm``, ``used``, ``rejected``
        as documented in ``docs/protocol.md``.

    Raises
    ------
    HelperError
        ``invalid_params`` for malformed input, ``fit_rejected`` for a model
        that cannot describe a real camera.
    """
    xy, uv, max_residual = _checked_input(xy, uv, max_residual)
    threshold = INLIER_FACTOR * max_residual
    params, inliers = _robust_fit(uv, xy, threshold)
    (a, b, c), (d, e, f) = params
    det = a * e - b * d
    mm_per_px = math.sqrt(abs(det))
    scale_uv = [math.hypot(a, d), math.hypot(b, e)]
    residuals = _residuals(params, uv[inliers], xy[inliers])
    rms = float(np.sqrt(np.mean(residuals ** 2)))
    used = [int(i) for i in np.flatnonzero(inliers)]
    rejected = [int(i) for i in np.flatnonzero(~inliers)]
    details = {"mm_per_px": mm_per_px, "scale_uv": scale_uv, "rms_mm": rms,
               "used": used, "rejected": rejected}
    if not all(MIN_MM_PER_PX <= s <= MAX_MM_PER_PX for s in [mm_per_px] + scale_uv):
        raise HelperError(
            "fit_rejected",
            f"The fitted scale of {mm_per_px:.5f} mm per pixel (u {scale_uv[0]:.5f}, "
            f"v {scale_uv[1]:.5f}) is outside the plausible {MIN_MM_PER_PX}-"
            f"{MAX_MM_PER_PX} mm per pixel; check that the detected nozzle followed "
            f"the toolhead moves (not a fixed spot in the image) and the camera focus.",
            details)
    if rms > max_residual:
        raise HelperError(
            "fit_rejected",
            f"The camera model fits the calibration points with an RMS error of "
            f"{rms:.4f} mm, more than the allowed {max_residual:.4f} mm; check that "
            f"the camera is mounted rigidly, the toolhead has no play (backlash) and "
            f"the detection is stable, then calibrate again.",
            details)
    return {
        "matrix": [[float(a), float(b)], [float(d), float(e)]],
        "offset": [float(c), float(f)],
        "mm_per_px": mm_per_px,
        "scale_uv": scale_uv,
        "rotation_deg": math.degrees(math.atan2(d, a)),
        "mirrored": bool(det > 0),
        "rms_mm": rms,
        "max_residual_mm": float(residuals.max()),
        "used": used,
        "rejected": rejected,
    }


def _checked_input(xy, uv, max_residual):
    """The pairs as arrays and the residual bound, or invalid_params."""
    xy = _as_points(xy, "machine position")
    uv = _as_points(uv, "pixel position")
    if len(xy) != len(uv):
        raise HelperError("invalid_params",
                          f"Got {len(xy)} machine positions but {len(uv)} pixel "
                          f"positions; each pair needs both.")
    if len(xy) < 3:
        raise HelperError("invalid_params",
                          f"The camera model needs at least 3 calibration pairs, "
                          f"got {len(xy)}.")
    try:
        max_residual = float(max_residual)
    except (TypeError, ValueError):
        max_residual = float("nan")
    if not (max_residual > 0 and math.isfinite(max_residual)):
        raise HelperError("invalid_params", "max_residual must be a positive number of mm.")
    _check_geometry(uv, xy, "")
    return xy, uv, max_residual


def _robust_fit(uv, xy, threshold):
    """RANSAC, then a least-squares refit on the inliers: (params, inliers)."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    inliers = np.ones(len(uv), bool)
    if len(uv) > 3:
        model, found = ransac((uv, xy), AffineTransform, min_samples=3,
                              residual_threshold=threshold, max_trials=2000, rng=0)
        if model is not None and found is not None and found.sum() >= 3:
            inliers = found
    params = _least_squares(uv[inliers], xy[inliers])
    # The refit may take back a point RANSAC's rougher model left out.
    inliers = _residuals(params, uv, xy) <= threshold
    if inliers.sum() < 3:
        raise HelperError(
            "fit_rejected",
            f"Only {int(inliers.sum())} of {len(uv)} calibration points agree with "
            f"one camera model; check that the camera and the nozzle do not move "
            f"or wobble and that the detection is stable.",
            {"used": [int(i) for i in np.flatnonzero(inliers)]})
    params = _least_squares(uv[inliers], xy[inliers])
    _check_geometry(uv[inliers], xy[inliers], "agreeing ")
    return params, inliers
