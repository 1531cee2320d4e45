"""The sim:// camera's nozzle looks and per-tool nozzle sizes."""

import math

import cv2
import numpy as np
import pytest

from ktamv_helper.cameras.sim import SimCamera, parse_sim_url
from ktamv_helper.detection import find_bore, to_gray
from ktamv_helper.errors import HelperError
from ktamv_helper.simulation.machine import MachineState


def test_mixed_looks_and_per_tool_nozzles():
    camera = SimCamera("sim://?tools=3&looks=mixed&nozzles=0.4,0.6,0.8&mm_per_px=0.01"
                       "&noise=0&jpeg=0")
    try:
        assert [camera.bore_radius(t) for t in range(3)] == pytest.approx([20, 30, 40])
        # Odd tools are the ring-light brass look: a wide clipped tip face.
        assert camera.look(1).collar_ratio >= 3.0 and camera.look(1).exposure > 1.0
        assert camera.look(1).smudge > 0
        for tool in range(3):
            image, pixel = camera.render(_state(camera, tool), 0)
            found = find_bore(image).detection
            assert found is not None, tool
            assert found.radius == pytest.approx(camera.bore_radius(tool), rel=0.1)
            assert abs(found.center[0] - pixel[0]) < 0.3
            assert abs(found.center[1] - pixel[1]) < 0.3
    finally:
        camera.close()


def test_cone_offsets_per_tool_reach_the_looks_and_the_truth():
    camera = SimCamera("sim://?tools=3&looks=ring_light&cone_offsets=0.5:0,-0.2:0.3"
                       "&noise=0&jpeg=0")
    try:
        assert camera.look(0).cone_offset == (0.5, 0.0)
        assert camera.look(1).cone_offset == (-0.2, 0.3)
        # Beyond the list: the ring-light look's own, drawn from the seed.
        assert 0.1 <= math.hypot(*camera.look(2).cone_offset) <= 0.35
        assert camera.truth()["cone_offsets"][:2] == [[0.5, 0.0], [-0.2, 0.3]]
        image, pixel = camera.render(_state(camera, 0), 0)
        found = find_bore(image).detection
        assert found is not None
        assert math.hypot(found.center[0] - pixel[0], found.center[1] - pixel[1]) < 0.3
    finally:
        camera.close()


def test_per_tool_exposures_reach_the_looks_and_the_bore_is_still_found():
    # Tool 0 over-exposed (its tip face clips and blooms), tool 1 dim,
    # tool 2 beyond the list keeps its look's own exposure.
    camera = SimCamera("sim://?tools=3&looks=ring_light&exposures=3,0.3&blurs=0,2"
                       "&noise=2&jpeg=0")
    try:
        assert [camera.look(t).exposure for t in range(2)] == [3.0, 0.3]
        assert [camera.look(t).blur_sigma for t in range(2)] == [0.0, 2.0]
        assert 1.05 <= camera.look(2).exposure <= 1.5
        means = []
        for tool in range(3):
            image, pixel = camera.render(_state(camera, tool), 0)
            means.append(float(image.mean()))
            found = find_bore(image).detection
            assert found is not None, tool
            assert math.hypot(found.center[0] - pixel[0], found.center[1] - pixel[1]) < 0.3
        assert means[0] > means[2] > means[1]
    finally:
        camera.close()


def test_one_led_colour_lights_every_tool_and_each_bore_is_still_found():
    # A deep-blue LED ring on the camera, dimmed: luma keeps a fifth of the
    # range and peaks under half the scale, so the detector weighs the
    # frame by the light's colour.
    camera = SimCamera("sim://?tools=2&looks=mixed&light=1,0.12,0&exposures=0.8,0.8"
                       "&noise=2&jpeg=75")
    try:
        assert camera.settings["light"] == [1.0, 0.12, 0.0]
        for tool in range(2):
            assert camera.look(tool).light_tint == (1.0, 0.12, 0.0)
            image, pixel = camera.render(_state(camera, tool), 0)
            assert not np.array_equal(to_gray(image), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
            found = find_bore(image).detection
            assert found is not None, tool
            assert math.hypot(found.center[0] - pixel[0], found.center[1] - pixel[1]) < 0.3
    finally:
        camera.close()


def _state(camera, tool):
    """The machine with tool ``tool`` selected over the camera's centre."""
    xy = (camera.settings["camera_x"], camera.settings["camera_y"])
    return MachineState(0.0, xy, xy, tool, camera.machine._nozzle(xy, tool))


@pytest.mark.parametrize("query, word", [
    ("looks=pretty", "looks"),
    ("nozzles=0.4,x", "nozzles"),
    ("nozzles=0.4,9", "nozzles"),
    ("exposures=1,x", "exposures"),
    ("exposures=0", "exposures"),
    ("blurs=1,30", "blurs"),
    ("cone_offsets=0.5", "cone_offsets"),
    ("cone_offsets=0.5:0,x:1", "cone_offsets"),
    ("cone_offsets=9:0", "cone_offsets"),
    ("cone_offsets=nan:0", "cone_offsets"),
    ("light=1,0.5", "light"),
    ("light=1,9,0", "light"),
    ("light=blue", "light"),
])
def test_bad_look_keys_are_named(query, word):
    with pytest.raises(HelperError, match=word):
        parse_sim_url("sim://?" + query)
