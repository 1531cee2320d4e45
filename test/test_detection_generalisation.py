"""The detector on pictures it was not developed on.

Two sources the detector's own renderer never produced: real photographs
without a nozzle (bundled with scikit-image), and the independent
photo-like generator ``test/photolike.py`` (ring-light reflections, chamfer,
glints, ooze, Bayer sensor, sharpening, JPEG). The full measurement is
``python test/bench_generalisation.py``; these are its seeded essentials.
"""

import math

import numpy as np
import pytest

import photolike
import real_photos
from ktamv_helper.detection import detect_nozzle

# Nozzle frames use the detector's (and the helper's) default radius range,
# 4-120 px. Photos without a nozzle use the 6-80 px: at 4-120 two
# textures of radius ~5 px still pass (see docs/benchmarks.md).
MIN_RADIUS, MAX_RADIUS = 6.0, 80.0


def _error(found, truth):
    return math.hypot(found.center[0] - truth[0], found.center[1] - truth[1])


@pytest.mark.parametrize("name", real_photos.PHOTOS)
def test_real_photos_without_a_nozzle_give_none(name):
    image = real_photos.load(name)
    if image is None:
        pytest.skip("%s needs a download" % name)
    frames = [image] + [real_photos.fill_frame(image, size) for size in real_photos.CAMERA_SIZES]
    found = [detect_nozzle(frame, MIN_RADIUS, MAX_RADIUS) for frame in frames]
    assert found == [None] * len(frames)


def test_real_photos_without_a_nozzle_give_none_at_the_printers_range():
    # Every photo at each camera size, as it is and under-exposed to a
    # quarter with sensor noise, searched with the printer's default radius
    # range. coins@640x480 passed both ways until a disc whose core gives
    # back over half its face's light stopped counting as a hole; a looser
    # score once let the darkened astronaut's and grass's textures through
    # while finding darkened nozzles (see docs/benchmarks.md).
    from bench_generalisation import DEFAULT_MIN_RADIUS, darkened
    rng = np.random.default_rng(9)
    passed = [label for label, image in real_photos.frames()
              for frame in (image, darkened(image, rng))
              if detect_nozzle(frame, DEFAULT_MIN_RADIUS) is not None]
    assert passed == []


def test_enough_real_photos_load_offline():
    # coins (bright discs), hubble (round blobs) and gravel (dark holes) are
    # the hard ones; they must really be part of the test.
    loaded = [name for name in real_photos.PHOTOS if real_photos.load(name) is not None]
    assert {"coins", "hubble_deep_field", "gravel", "moon"} <= set(loaded)
    assert len(loaded) >= 15


@pytest.mark.parametrize("size, radius, tilt", [
    ((320, 240), 6.5, 0.0),
    ((640, 480), 23.0, 12.0),
    ((1280, 720), 50.0, 0.0),
    ((1920, 1080), 78.0, 18.0),
])
def test_clean_photolike_nozzle_found_to_a_few_hundredths(size, radius, tilt):
    # No sensor noise or JPEG: checks the generator's ground truth (tilted
    # ellipses, chamfer, LED reflections) as much as the detector.
    scene = photolike.Scene(size=size, center=(size[0] * 0.43 + 0.37, size[1] * 0.55 - 0.21),
                            bore_radius=radius, tilt_deg=tilt, tilt_dir=0.7,
                            shot_noise=0.0, read_noise=0.0, defocus=1.0, scratches=0,
                            burnt=0, seed=3)
    image, truth = photolike.render(scene)
    found = detect_nozzle(image)
    assert found is not None
    assert _error(found, truth) < 0.06
    # The bore or its chamfered rim, not the tip face: the half-way edge of a
    # gamma-encoded, blurred step lies a little inside the true one.
    assert 0.9 * radius < found.radius < radius * (1 + scene.chamfer) + 0.5


@pytest.mark.parametrize("condition", [
    dict(glint=True), dict(ooze=True), dict(chamfer=0.18, led_count=16, led_gain=3.0),
    dict(exposure=1.8), dict(exposure=0.3, read_noise=0.012), dict(jpeg_quality=30),
    dict(metal="ruby", backdrop="red_sock"), dict(metal="black_coated", backdrop="white_sock"),
    dict(tilt_deg=18, tilt_dir=1.0), dict(defocus=3.0),
])
def test_hard_conditions_one_at_a_time(condition):
    # Each on five otherwise ordinary scenes (8 LEDs, a thin chamfer, two
    # scratches, a burnt patch), bore radius 10-34 px. Measured: at most one
    # miss (ooze, strong chamfer with 16 bright LEDs, 3 px defocus) and
    # errors up to 0.36 px.
    errors = []
    for seed in range(5):
        scene = photolike.Scene(size=(640, 480), center=(300.3 + 20 * seed, 250.6),
                                bore_radius=10.0 + 6 * seed, seed=seed, **condition)
        image, truth = photolike.render(scene)
        found = detect_nozzle(image)
        if found is not None:
            errors.append(_error(found, truth))
    assert len(errors) >= 4, (condition, errors)
    assert max(errors) < 0.4, (condition, errors)


def test_seeded_photolike_set_detection_rate_and_accuracy():
    rng = np.random.default_rng(20261125)
    sizes = [(320, 240), (640, 480), (640, 480), (1280, 720)]
    errors, missed, wrong = [], 0, 0
    for i in range(48):
        image, truth, _ = photolike.random_frame(rng, sizes[i % len(sizes)])
        found = detect_nozzle(image)
        if found is None:
            missed += 1
        elif _error(found, truth) > 2.0:
            wrong += 1
        else:
            errors.append(_error(found, truth))
    # Measured on this seed: 47 found, 1 missed (a glint in a 21 px bore
    # with a chamfer), none wrong; median error 0.07 px, p95 0.20, max 0.44.
    # When this test was written: 43 found, 5 missed.
    assert wrong == 0
    assert missed <= 3          # >= 93 % found
    assert np.median(errors) < 0.1
    assert np.percentile(errors, 95) < 0.4
    assert max(errors) < 1.0


def test_photolike_frames_without_a_nozzle_give_none():
    # Heater block or sock, screw holes with a lighter chamfer, vignetting.
    # Known weakness: a screw hole whose rim is a little lighter than a
    # textured, vignetted plate can pass as a bore (1 of these 24 frames).
    rng = np.random.default_rng(7)
    sizes = [(320, 240), (640, 480), (1280, 720)]
    found = [detect_nozzle(photolike.random_frame(rng, sizes[i % 3], nozzle=False)[0])
             for i in range(24)]
    assert sum(f is not None for f in found) <= 1


def _drawn_scene(seed, index):
    """The ``index``-th scene a seeded draw gives (sizes in turn, as
    test/bench_generalisation.py draws them); only parameters are drawn, so
    this is cheap."""
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (640, 480), (1280, 720), (1920, 1080)]
    for i in range(index):
        photolike.random_scene(rng, sizes[i % len(sizes)])
    return photolike.random_scene(rng, sizes[index % len(sizes)])


@pytest.mark.parametrize("seed, index, what", [
    (21, 120, "glint off the centre of a chamfered bore, black-coated tip"),
    (21, 146, "broad glint off the centre, brass, face clipped at white"),
    (21, 220, "face clipped at white, ooze over a quarter of the rim"),
    (21, 79, "a dark spot on the tip face, 1920x1080"),
    (21, 150, "a dark spot on the tip face, 1280x720"),
    (21, 216, "a dark spot on the tip face, 320x240"),
    (7, 40, "a glint in a sharp bore, a dark spot on its face, 320x240"),
    (7, 380, "a glint in a sharp bore, a dark spot on its face, 320x240"),
])
def test_missed_photolike_nozzles_of_an_independent_draw(seed, index, what):
    # Misses of draws of photo-like frames (seeds 21 and 7) the detector
    # was not developed on. A glint off the bore's centre moved the median
    # profile's peak 2.5 px out, so the ring structure took it for no
    # glint, and left a quarter of the inside bright; a clipped face cut
    # the score by 30 %, under the acceptance line with ooze on the rim;
    # a 3-5 px dark spot on the tip face scored as high as the bore and
    # the frame was refused as ambiguous; and where the bore held a glint
    # its edge width was read from the glint outwards (10 and 17 px for
    # sharp bores), so the bore seemed far blurrier than the spot and the
    # spot stayed a rival.
    scene = _drawn_scene(seed, index)
    image, truth = photolike.render(scene)
    found = detect_nozzle(image)
    assert found is not None, what
    assert _error(found, truth) < 0.3, what


# Two frames of seed 31 of the generalisation bench: ooze (A) or burnt
# residue (B) hides a third or more of the bore's rim, and a dark spot on
# the tip face was the only bore measured fully, so it was taken, 29 and
# 62 px from the nozzle.
OOZE_HIDES_THE_RIM = photolike.Scene(
    size=(320, 240), nozzle=True, center=(52.58355778832569, 95.68316099284664),
    bore_radius=15.843372976237923, face_ratio=2.190389950037244, cone_ratio=2.961620016424551,
    hex_ratio=4.235604962565918, tilt_deg=0.0, tilt_dir=0.12763182746147164,
    metal='black_coated', face_gain=1.518950903031272, chamfer=0.1990733254603072,
    grooves=0.10017904317085241, led_count=16, led_gain=2.7925852752086446,
    led_ring=0.42281885614713416, scratches=3, burnt=1, glint=False, ooze=True,
    ooze_colour=(0.6, 0.6, 0.62), backdrop='blue_sock',
    backdrop_offset=(-4.6959515259854, -47.03496545055215), holes=0,
    light_dir=2.2686840492286993, light_gradient=0.15730028152829087,
    vignetting=0.4936527127850965, exposure=0.6103449719928078, defocus=1.1178962113536985,
    back_defocus=6.818154950251933, shot_noise=0.003348222801787156,
    read_noise=0.010608550877069751,
    white_balance=(1.1114391023941796, 1.008952380734948, 0.9664559754736488), sharpen=0.0,
    sensor_scale=1.0, jpeg_quality=85, seed=123415141)
RESIDUE_HIDES_THE_RIM = photolike.Scene(
    size=(320, 240), nozzle=True, center=(211.18527086592204, 127.24308549244677),
    bore_radius=30.693998846885762, face_ratio=3.0841974926899636,
    cone_ratio=5.889013915322014, hex_ratio=7.628371627435793, tilt_deg=7.819026254848267,
    tilt_dir=1.975802233693845, metal='brass', face_gain=1.1157696724309847,
    chamfer=0.15830642055545532, grooves=0.10355017534050893, led_count=12,
    led_gain=1.6753865372370444, led_ring=0.37356296487848994, scratches=0, burnt=1,
    glint=False, ooze=False, ooze_colour=(0.1, 0.2, 0.8), backdrop='red_sock',
    backdrop_offset=(-72.19569125384714, 2.197254540476874), holes=2,
    light_dir=4.519302350230394, light_gradient=0.23113146452241598,
    vignetting=0.2752116830613545, exposure=0.46842145799666457, defocus=0.2197796293408985,
    back_defocus=4.104226550908965, shot_noise=0.004193006168104033,
    read_noise=0.0029234327885107074,
    white_balance=(1.0713084416061172, 1.096021206986483, 1.006383085501076), sharpen=0.0,
    sensor_scale=1.0, jpeg_quality=39, seed=30701901)


@pytest.mark.parametrize("scene", [OOZE_HIDES_THE_RIM, RESIDUE_HIDES_THE_RIM])
def test_a_spot_on_the_face_of_a_bore_hidden_by_ooze_is_refused_not_taken(scene):
    from ktamv_helper.detection import find_bore
    image, truth = photolike.render(scene)
    search = find_bore(image, 3.0)
    assert search.detection is None
    assert search.refusal == "ambiguous"
    assert "lies on the tip face of a larger bore" in search.message
    assert "too hidden to measure" in search.message


def test_the_same_nozzle_without_the_residue_is_found():
    import dataclasses
    image, truth = photolike.render(dataclasses.replace(RESIDUE_HIDES_THE_RIM, burnt=0))
    found = detect_nozzle(image, 3.0)
    assert found is not None and _error(found, truth) < 0.5
