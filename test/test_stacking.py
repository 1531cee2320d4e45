"""Dim frames summed into a longer exposure (ktamv_helper.detection.stacking):
how many, the sum itself, and bores that only the sum shows, on rendered
nozzles and (where ../shared/photos is here) on the real photos."""

import math
import os

import cv2
import numpy as np
import pytest

from conftest import draw_nozzle
from ktamv_helper.detection import find_bore
from ktamv_helper.detection.stacking import MAX_STACK, stack_depth, sum_frames
from ktamv_helper.simulation.render import render_nozzle, ring_light_look
from ktamv_helper.simulation.warps import Warp, apply_warp

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "photos")


def darkened(image, gain):
    return np.clip(image.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def noisy_frames(image, sigma, count, seed):
    """``count`` frames of one still scene, each with its own sensor noise."""
    rng = np.random.default_rng(seed)
    return [np.clip(image + rng.normal(0.0, sigma, image.shape) + 0.5, 0, 255).astype(np.uint8)
            for _ in range(count)]


def _apart(a, b):
    return math.hypot(a[0] - b[0], a[1] - b[1])


@pytest.mark.parametrize("gain, depth", [(1.0, 1), (0.6, 1), (0.45, 2), (0.25, 3),
                                         (0.1, 8), (0.02, MAX_STACK)])
def test_the_depth_brings_the_brightest_parts_to_a_normal_exposure(gain, depth):
    # draw_nozzle's tip face is 200-210: at x0.25 it is ~52, 200 // 52 = 3.
    image = darkened(draw_nozzle(), gain)
    assert stack_depth(image) == depth
    assert stack_depth(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)) == depth


def test_a_picture_that_would_stay_blank_is_not_summed():
    # A grey card at 90 is not dim, just flat: its sum would be as blank.
    assert stack_depth(np.full((480, 640, 3), 90, np.uint8)) == 1
    assert stack_depth(np.full((480, 640, 3), 8, np.uint8)) == 1
    # A dim picture with something in it is summed, however dark.
    image = np.full((480, 640, 3), 2, np.uint8)
    image[200:280, 280:360] = 12
    assert stack_depth(image) == MAX_STACK


def test_the_depth_follows_the_brightest_channel_not_luma():
    # A blue LED: luma is ~23, but the blue channel is at 200 and would
    # clip if frames were summed.
    image = np.zeros((120, 160, 3), np.uint8)
    image[:, :, 0] = 200
    assert cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).max() < 30
    assert stack_depth(image) == 1


def test_the_depth_reads_the_picture_not_its_noise():
    # Noise of sigma 6 lifts the 99.5th percentile of a face at 21 by ~15
    # levels; the depth is read on 4x4 averages, where it is ~4 times less.
    image = darkened(draw_nozzle(), 0.1)
    quiet = stack_depth(image)
    for frame in noisy_frames(image, 6.0, 3, seed=1):
        assert stack_depth(frame) in (quiet - 1, quiet)


def test_sum_frames_adds_levels_without_wrapping_and_clips_at_white():
    a = np.array([[10, 200], [100, 0]], np.uint8)
    b = np.array([[20, 200], [100, 0]], np.uint8)
    assert sum_frames([a, b]).tolist() == [[30, 255], [200, 0]]
    assert sum_frames([a]).tolist() == a.tolist()
    assert sum_frames([a, b]).dtype == np.uint8
    with pytest.raises(ValueError, match="no frames"):
        sum_frames([])
    with pytest.raises(ValueError, match="cannot be summed"):
        sum_frames([a, np.zeros((3, 2), np.uint8)])


def test_summed_dim_frames_show_a_bore_that_no_single_frame_shows():
    # A brass nozzle under a ring light at x0.08 exposure (tip face ~20
    # levels) with sensor noise of sigma 5: every frame alone gives
    # nothing; the sum of stack_depth of them is found where the
    # undarkened picture puts the bore.
    rng = np.random.default_rng(3)
    center = (318.6, 242.3)
    image = render_nozzle((640, 480), center, 12.0,
                          ring_light_look(rng, blur_sigma=1.0, jpeg_quality=0), rng)
    reference = find_bore(image).detection
    assert _apart(reference.center, center) < 0.2
    dim = darkened(image, 0.08)
    depth = stack_depth(dim)
    assert 4 <= depth <= MAX_STACK
    frames = noisy_frames(dim, 5.0, depth, seed=4)
    assert all(find_bore(frame).detection is None for frame in frames)
    found = find_bore(sum_frames(frames)).detection
    assert found is not None
    assert _apart(found.center, reference.center) < 0.25
    assert found.radius == pytest.approx(reference.radius, rel=0.05)


def test_summed_dim_frames_without_a_nozzle_show_none():
    # The same summing must not make a bore of the nozzle-less picture.
    image = draw_nozzle()
    image[:] = 205          # the camera sees only the bright body
    rng = np.random.default_rng(5)
    texture = cv2.GaussianBlur(rng.normal(0.0, 25.0, image.shape[:2]).astype(np.float32),
                               (0, 0), 3.0)
    image = np.clip(image + texture[:, :, None], 0, 255).astype(np.uint8)
    dim = darkened(image, 0.08)
    frames = noisy_frames(dim, 5.0, stack_depth(dim), seed=6)
    assert find_bore(sum_frames(frames)).detection is None


@pytest.mark.skipif(not os.path.isdir(PHOTOS), reason="no ../shared/photos here")
@pytest.mark.parametrize("name, limit", [("ktamv-doc-1.png", 0.5), ("ktamv-doc-2.png", 0.5),
                                         ("axiscope-1.png", 3.0)])
def test_real_photos_at_a_seventh_of_their_exposure_are_found_in_the_sum(name, limit):
    # The photo at x0.15 exposure with sensor noise of sigma 3 per frame:
    # missed in every single frame (the photo bench's "under-exposed
    # x0.15" row: 0 of 30 each), found in the sum where the photo itself
    # puts the bore. axiscope's ragged rim moves its fitted centre by up
    # to 2 px between views (docs/benchmarks.md).
    image = cv2.imread(os.path.join(PHOTOS, name))
    reference = find_bore(image).detection
    dim = apply_warp(image, Warp(exposure=0.15), np.random.default_rng(0))
    frames = noisy_frames(dim, 3.0, stack_depth(dim), seed=7)
    assert len(frames) >= 4
    assert all(find_bore(frame).detection is None for frame in frames[:2])
    found = find_bore(sum_frames(frames)).detection
    assert found is not None
    assert _apart(found.center, reference.center) < limit

