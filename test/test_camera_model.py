import math

import numpy as np
import pytest

from ktamv_helper.camera_model import fit_camera_model
from ktamv_helper.errors import HelperError


def _pairs(matrix, offset, n=12, noise_mm=0.0, seed=3):
    """Calibration-like pairs: a ring of toolhead moves around a centre."""
    rng = np.random.default_rng(seed)
    a = np.asarray(matrix, float)
    inv = np.linalg.inv(a)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = rng.uniform(0.3, 1.0, n)
    xy = np.column_stack([150 + radius * np.cos(angles), 100 + radius * np.sin(angles)])
    uv = (xy - offset) @ inv.T
    xy = xy + rng.normal(0, noise_mm, xy.shape)
    return xy, uv


def _affine(scale_u, scale_v, rotation_deg, mirror):
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    flip = np.diag([1.0, -1.0 if mirror else 1.0])
    return rot @ flip @ np.diag([scale_u, scale_v])


@pytest.mark.parametrize("rotation, mirror", [(2.9, True), (-37.0, False), (180.0, True)])
def test_known_affine_recovered(rotation, mirror):
    matrix = _affine(0.0101, 0.0123, rotation, mirror)
    offset = np.array([146.8, 96.2])
    xy, uv = _pairs(matrix, offset, noise_mm=0.0005)
    result = fit_camera_model(xy, uv)
    assert np.allclose(result["matrix"], matrix, atol=2e-4)
    assert np.allclose(result["offset"], offset, atol=0.02)
    assert result["scale_uv"] == pytest.approx([0.0101, 0.0123], abs=2e-4)
    assert result["mm_per_px"] == pytest.approx(math.sqrt(0.0101 * 0.0123), abs=2e-4)
    expected_rot = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    assert result["rotation_deg"] == pytest.approx(expected_rot, abs=0.5)
    # mirrored means a positive determinant (see docs/protocol.md).
    assert result["mirrored"] is bool(np.linalg.det(matrix) > 0)
    assert result["mirrored"] is (not mirror)
    assert result["rms_mm"] < 0.002
    assert result["used"] == list(range(12)) and result["rejected"] == []


def test_outlier_pair_rejected_and_listed():
    matrix = _affine(0.01, 0.01, 10.0, True)
    xy, uv = _pairs(matrix, [150.0, 100.0], noise_mm=0.0003)
    uv[4] += [25.0, -12.0]                 # a misdetection
    result = fit_camera_model(xy, uv)
    assert result["rejected"] == [4]
    assert 4 not in result["used"] and len(result["used"]) == 11
    assert np.allclose(result["matrix"], matrix, atol=1e-4)


def test_exact_three_points():
    matrix = _affine(0.02, 0.02, 0.0, False)
    xy, uv = _pairs(matrix, [10.0, 20.0], n=3)
    result = fit_camera_model(xy, uv)
    assert np.allclose(result["matrix"], matrix, atol=1e-9)
    assert result["rms_mm"] < 1e-9


def test_collinear_points_rejected():
    xy = np.array([[150.0 + i * 0.2, 100.0] for i in range(8)])
    uv = np.array([[300.0 + i * 20, 240.0] for i in range(8)])
    with pytest.raises(HelperError) as err:
        fit_camera_model(xy, uv)
    assert err.value.code == "fit_rejected"
    assert "line" in err.value.message


@pytest.mark.parametrize("pairs", [[], [[1, 2]], [[1, 2], [3, 4]]])
def test_too_few_pairs_invalid(pairs):
    with pytest.raises(HelperError) as err:
        fit_camera_model(pairs, pairs)
    assert err.value.code == "invalid_params"
    assert "at least 3" in err.value.message


@pytest.mark.parametrize("xy, uv", [
    ([[1, 2], [3, "x"], [5, 6]], [[1, 2], [3, 4], [5, 6]]),
    ([[1, 2], [3, float("nan")], [5, 6]], [[1, 2], [3, 4], [5, 6]]),
    ([[1, 2, 3], [3, 4, 5], [5, 6, 7]], [[1, 2], [3, 4], [5, 6]]),
    ([[1, 2], [3, 4], [5, 6], [7, 9]], [[1, 2], [3, 4], [5, 6]]),
])
def test_malformed_pairs_invalid(xy, uv):
    with pytest.raises(HelperError) as err:
        fit_camera_model(xy, uv)
    assert err.value.code == "invalid_params"


@pytest.mark.parametrize("scale", [0.0004, 0.5])
def test_absurd_scale_rejected(scale):
    xy, uv = _pairs(_affine(scale, scale, 5.0, True), [150.0, 100.0])
    with pytest.raises(HelperError) as err:
        fit_camera_model(xy, uv)
    assert err.value.code == "fit_rejected"
    assert "mm per pixel" in err.value.message


def test_high_residual_rejected():
    xy, uv = _pairs(_affine(0.01, 0.01, 0.0, True), [150.0, 100.0], noise_mm=0.03)
    with pytest.raises(HelperError) as err:
        fit_camera_model(xy, uv, max_residual=0.02)
    assert err.value.code in ("fit_rejected",)
    assert "RMS" in err.value.message or "agree" in err.value.message
    # The same data passes with a looser limit.
    result = fit_camera_model(xy, uv, max_residual=0.1)
    assert 0.01 < result["rms_mm"] < 0.1
