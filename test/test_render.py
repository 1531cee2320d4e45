"""The nozzle renderer: exact geometry, appearance knobs, speed budget."""

import time

import cv2
import numpy as np
import pytest

from ktamv_helper.simulation.render import (NozzleLook, random_look, render_nozzle,
                                            ring_light_look)


def _dark_centroid(image, center, radius):
    """Centroid of the bore's darkness below the dimmest part of the tip face.

    Only pixels within 2 bore radii are used; the face reaches 2.5, so every
    pixel counted is bore, bore edge or face (which weighs nothing).
    """
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
    ys, xs = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    dist = np.hypot(xs - center[0], ys - center[1])
    face = gray[(dist > 1.5 * radius) & (dist < 2.0 * radius)].min()
    weight = np.where(dist < 2.0 * radius, np.clip(face - gray, 0, None), 0.0)
    return (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()


@pytest.mark.parametrize("center", [(320.0, 240.0), (300.25, 200.75), (101.6, 377.3)])
def test_bore_is_centred_exactly(center):
    look = NozzleLook(collar_ratio=2.5, collar_sheen=0.0)
    image = render_nozzle((640, 480), center, 12.0, look)
    u, v = _dark_centroid(image, center, 12.0)
    assert abs(u - center[0]) < 0.01 and abs(v - center[1]) < 0.01


def test_shapes_and_types():
    for size in [(320, 240), (640, 480), (1920, 1080)]:
        image = render_nozzle(size, (size[0] / 2, size[1] / 2), 10)
        assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8


def test_bore_dark_collar_bright():
    image = render_nozzle((640, 480), (320, 240), 20)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert gray[240, 320] < 40                      # bore
    assert gray[240, 320 + 30] > 180                # tip face at 1.5 radii
    assert gray[240, 320 + 30] > gray[240, 320 + 70] + 60   # darker cone


def test_no_nozzle_has_no_bore():
    image = render_nozzle((640, 480), None, 20, NozzleLook(background="dark"))
    assert cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).max() < 30


def test_seeded_and_repeatable():
    a = render_nozzle((320, 240), (160, 120), 8, random_look(np.random.default_rng(3)),
                      np.random.default_rng(4))
    b = render_nozzle((320, 240), (160, 120), 8, random_look(np.random.default_rng(3)),
                      np.random.default_rng(4))
    assert np.array_equal(a, b)


def test_camera_faults_change_the_picture():
    clean = render_nozzle((320, 240), (160, 120), 10).astype(int)
    blurred = render_nozzle((320, 240), (160, 120), 10, NozzleLook(blur_sigma=2.0)).astype(int)
    noisy = render_nozzle((320, 240), (160, 120), 10, NozzleLook(noise_sigma=8.0)).astype(int)
    dim = render_nozzle((320, 240), (160, 120), 10, NozzleLook(exposure=0.4)).astype(int)
    assert np.abs(np.diff(blurred, axis=1)).max() < np.abs(np.diff(clean, axis=1)).max()
    assert 3 < np.std(noisy - clean) < 12
    assert dim.mean() < 0.5 * clean.mean()


def test_cone_offset_moves_the_turned_outside_and_not_the_bore():
    look = NozzleLook(background="dark")
    centred = render_nozzle((640, 480), (320.3, 240.6), 20, look).astype(int)
    # 0.5 bore radii = 10 px to the right: the outside is the same picture
    # shifted by 10 px, the bore is where it was.
    look.cone_offset = (0.5, 0.0)
    moved = render_nozzle((640, 480), (320.3, 240.6), 20, look).astype(int)
    ys, xs = np.mgrid[0:480, 0:640]
    from_bore = np.hypot(xs - 320.3, ys - 240.6)
    from_outside = np.hypot(xs - 330.3, ys - 240.6)
    outside = (from_bore > 20 * 2.2 + 12) & (from_outside > 20 * 2.2 + 2) & (xs >= 10)
    assert np.array_equal(moved[outside], np.roll(centred, 10, axis=1)[outside])
    assert np.array_equal(moved[from_bore < 18], centred[from_bore < 18])
    assert not np.array_equal(moved, centred)
    # The tip face is no longer even round the bore: wider on the right.
    gray = cv2.cvtColor(moved.astype(np.uint8), cv2.COLOR_BGR2GRAY)
    assert gray[240, 320 + 50] > 150 > gray[240, 320 - 50]


def test_ring_light_cones_are_a_little_off_their_bores():
    sizes = []
    for seed in range(20):
        dx, dy = ring_light_look(np.random.default_rng(seed)).cone_offset
        sizes.append(np.hypot(dx, dy))
    assert 0.1 <= min(sizes) and max(sizes) <= 0.35
    assert ring_light_look(np.random.default_rng(0), cone_offset=(0, 0)).cone_offset == (0, 0)
    assert random_look(np.random.default_rng(0)).cone_offset == (0.0, 0.0)


def test_random_look_overrides():
    look = random_look(np.random.default_rng(1), dirt=0.0, glints=3)
    assert look.dirt == 0.0 and look.glints == 3


def test_renders_fast_enough_for_a_sim_camera():
    rng = np.random.default_rng(0)
    looks = [random_look(rng) for _ in range(10)]
    render_nozzle((640, 480), (320, 240), 15, looks[0], rng)
    start = time.process_time()
    for look in looks:
        render_nozzle((640, 480), (320, 240), 15, look, rng)
    # Generous: ~10 ms here; a loaded CI box must not fail the suite.
    assert (time.process_time() - start) / len(looks) < 0.2


def test_bad_size_raises():
    with pytest.raises(ValueError):
        render_nozzle((4, 4), None, 2)
