"""Known warps of a photo (ktamv_helper.simulation.warps), used by the photo bench."""

import cv2
import numpy as np
import pytest

from ktamv_helper.simulation.warps import Warp, apply_warp, crop_box, warp_point


def _dot_photo(width=320, height=240, at=(200.0, 90.0)):
    image = np.full((height, width, 3), 180, np.uint8)
    cv2.circle(image, (int(at[0] * 16), int(at[1] * 16)), 4 * 16, (20, 20, 20), -1,
               cv2.LINE_AA, shift=4)
    return image, at


def _dot_centre(image, background=180.0):
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    weight = np.clip(background - gray, 0, None)
    ys, xs = np.indices(gray.shape)
    return (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()


@pytest.mark.parametrize("warp", [
    Warp(rotation_deg=5.0, zoom=0.97, shift=(0.1, -0.08), crop=True),
    Warp(rotation_deg=-6.0, zoom=1.03, shift=(-0.1, 0.1), rescale=0.5, crop=True),
    Warp(rotation_deg=2.0, shift=(0.05, 0.0), rescale=2.0, crop=True),
])
def test_a_cropped_variant_shows_only_the_photo_and_its_points_land_where_said(warp):
    photo, dot = _dot_photo()
    x0, y0, x1, y1 = crop_box(warp, photo.shape)
    # Every corner of the kept box maps back inside the photo.
    m = cv2.invertAffineTransform(
        cv2.getRotationMatrix2D((159.5, 119.5), warp.rotation_deg, warp.zoom)
        + np.array([[0, 0, warp.shift[0] * 320], [0, 0, warp.shift[1] * 240]]))
    for u, v in [(x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)]:
        su, sv = m @ np.array([u, v, 1.0])
        assert -0.5 <= su <= 319.5 and -0.5 <= sv <= 239.5
    # The cut is no bigger than the warp needs: a 10 % shift costs ~10 %.
    assert (x1 - x0) > 0.75 * 320 and (y1 - y0) > 0.7 * 240
    variant = apply_warp(photo, warp, np.random.default_rng(0))
    assert variant.shape[:2] == (round((y1 - y0) * warp.rescale),
                                 round((x1 - x0) * warp.rescale))
    expected = warp_point(dot, warp, photo.shape)
    found = _dot_centre(variant)
    assert np.hypot(found[0] - expected[0], found[1] - expected[1]) < 0.1 * max(1, warp.rescale)


def test_jpeg_changes_the_pixels_not_where_the_dot_is():
    photo, dot = _dot_photo()
    warp = Warp(rotation_deg=4.0, shift=(0.05, 0.02), jpeg_quality=30, crop=True)
    plain = apply_warp(photo, Warp(rotation_deg=4.0, shift=(0.05, 0.02), crop=True),
                       np.random.default_rng(0))
    coded = apply_warp(photo, warp, np.random.default_rng(0))
    assert coded.shape == plain.shape
    # Blocks and ringing: pixels change by several grey levels ...
    assert np.abs(coded.astype(int) - plain.astype(int)).max() >= 4
    # ... the dot stays where the geometry puts it (weighed below the
    # ringing round it).
    expected = warp_point(dot, warp, photo.shape)
    found = _dot_centre(coded, background=150.0)
    assert np.hypot(found[0] - expected[0], found[1] - expected[1]) < 0.1


def test_without_crop_the_variant_keeps_the_frame_size():
    photo, dot = _dot_photo()
    warp = Warp(rotation_deg=3.0, shift=(0.1, 0.0))
    assert crop_box(warp, photo.shape) == (0, 0, 320, 240)
    assert apply_warp(photo, warp, np.random.default_rng(0)).shape == photo.shape
