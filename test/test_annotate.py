"""The overlay: where it draws (sub-pixel), what colour, and that it scales."""

import types

import numpy as np
import pytest

from ktamv_helper import annotate as an


def gray(width, height, level=90):
    return np.full((height, width, 3), level, dtype=np.uint8)


def color_mask(image, bgr, tolerance=60):
    difference = np.abs(image.astype(int) - np.array(bgr, dtype=int))
    return np.all(difference <= tolerance, axis=2)


def green_weight(image):
    """Weight of the green detection colour: G minus R, which is zero for the
    yellow crosshair, white text and the grey background."""
    b, g, r = (image[:, :, i].astype(float) for i in range(3))
    return np.clip(g - r - b, 0, None)


def weighted_centroid(weight):
    ys, xs = np.nonzero(weight)
    w = weight[ys, xs]
    return float((xs * w).sum() / w.sum()), float((ys * w).sum() / w.sum())


def test_returns_a_new_bgr_image_and_leaves_the_input_alone():
    image = gray(320, 240)
    before = image.copy()
    out = an.annotate(image, status_lines=["state: idle"])
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    assert np.array_equal(image, before)
    assert not np.array_equal(out, image)
    grey_out = an.annotate(np.full((240, 320), 90, np.uint8))
    assert grey_out.shape == (240, 320, 3)


@pytest.mark.parametrize("size", [(320, 240), (641, 481), (1920, 1080)])
def test_crosshair_passes_through_the_image_centre(size):
    width, height = size
    out = an.annotate(gray(width, height))
    yellow = color_mask(out, an.CROSSHAIR_COLOR, tolerance=90)
    cu, cv = (width - 1) / 2.0, (height - 1) / 2.0
    # Column and row of yellow pixels, measured far from the text box.
    rows = slice(int(height * 0.6), height)
    cols_hit = np.nonzero(yellow[rows].sum(axis=0) > 0.5 * yellow[rows].shape[0])[0]
    assert abs(cols_hit.mean() - cu) <= 0.5
    lines_hit = np.nonzero(yellow[:, int(width * 0.6):].sum(axis=1)
                           > 0.5 * (width - int(width * 0.6)))[0]
    assert abs(lines_hit.mean() - cv) <= 0.5


def test_detection_circle_is_drawn_with_sub_pixel_precision():
    centres = []
    for u in (100.2, 100.7):
        det = types.SimpleNamespace(center=(u, 70.0), radius=20.0, score=0.9)
        out = an.annotate(gray(640, 480), det)
        region = np.zeros(out.shape[:2])
        region[40:101, 70:131] = green_weight(out)[40:101, 70:131]
        centres.append(weighted_centroid(region))
    (u1, v1), (u2, v2) = centres
    assert abs(u1 - 100.2) < 0.15 and abs(v1 - 70.0) < 0.15
    # Rounding to whole pixels would move it by 0 or 1 px, not 0.5.
    assert abs((u2 - u1) - 0.5) < 0.12


def test_detection_radius_and_mapping_detection():
    det = {"center": (200.0, 150.0), "radius": 35.0, "score": 0.8}
    out = an.annotate(gray(640, 480), det)
    weight = green_weight(out)
    ys, xs = np.nonzero(weight[100:200, 150:250] > 100)
    distances = np.hypot(xs + 150 - 200.0, ys + 100 - 150.0)
    ring = distances[distances > 10]  # leave out the centre mark
    assert abs(np.median(ring) - 35.0) < 1.0


def test_tolerance_circle_around_centre_and_on_target_colours():
    out = an.annotate(gray(640, 480), tolerance_px=30.0)
    cyan = color_mask(out, an.TOLERANCE_COLOR, tolerance=80)
    ys, xs = np.nonzero(cyan)
    distances = np.hypot(xs - 319.5, ys - 239.5)
    assert len(distances) > 50
    assert abs(np.median(distances) - 30.0) < 1.0

    near = types.SimpleNamespace(center=(325.0, 240.0), radius=40, score=1)
    far = types.SimpleNamespace(center=(400.0, 300.0), radius=40, score=1)
    inside = an.annotate(gray(640, 480), near, tolerance_px=10)
    outside = an.annotate(gray(640, 480), far, tolerance_px=10)
    assert color_mask(inside, an.DETECTION_COLOR).sum() > 100
    assert color_mask(inside, an.OFF_TARGET_COLOR, 40).sum() == 0
    assert color_mask(outside, an.OFF_TARGET_COLOR, 40).sum() > 100
    assert color_mask(outside, an.DETECTION_COLOR, 40).sum() == 0


def text_height(width, height):
    out = an.annotate(np.zeros((height, width, 3), np.uint8),
                      status_lines=["HHHH"])
    white = np.all(out > 200, axis=2)
    white[:, int((width - 1) / 2) - 3:int((width - 1) / 2) + 4] = False
    ys, xs = np.nonzero(white[: height // 3, : width // 3])
    return ys.max() - ys.min() + 1


def test_text_scales_with_the_frame():
    small, large = text_height(320, 240), text_height(1920, 1080)
    assert 7 <= small <= 16        # legible on a 320x240 webcam
    assert large >= 3 * small      # and not a speck on 1080p


def test_long_text_wraps_to_fit_the_width():
    line = "last: T1 offset +0.0123, -0.0345 mm after 4 iterations (ok)"
    out = an.annotate(np.zeros((240, 320, 3), np.uint8), status_lines=[line])
    white = np.all(out > 200, axis=2)[:60]
    xs = np.nonzero(white)[1]
    assert xs.max() < 318


def test_unusable_values_are_skipped_not_drawn_or_raised():
    plain = an.annotate(gray(320, 240))
    for det in (types.SimpleNamespace(center=(float("nan"), 3), radius=2, score=1),
                types.SimpleNamespace(center=None, radius=2, score=1),
                {"center": ("a", "b")}):
        assert np.array_equal(an.annotate(gray(320, 240), det), plain)
    huge = types.SimpleNamespace(center=(1e12, -1e12), radius=1e12, score=1)
    out = an.annotate(gray(320, 240), huge, tolerance_px=float("inf"),
                      status_lines=["µm ±"])
    assert out.shape == (240, 320, 3)


def test_placeholder_image_has_size_and_text():
    image = an.placeholder_image(["waiting for camera"], size=(400, 300))
    assert image.shape == (300, 400, 3)
    assert np.all(image > 200, axis=2).sum() > 50
