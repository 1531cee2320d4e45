"""The sim:// camera and the simulated printer's physics."""

import math
import threading
import time

import numpy as np
import pytest

from ktamv_helper.cameras.sim import SimCamera, parse_sim_url
from ktamv_helper.errors import HelperError
from ktamv_helper.simulation import machine as m


# -- tool names --------------------------------------------------------------

@pytest.mark.parametrize("name, number", [
    ("extruder", 0), ("extruder1", 1), ("extruder12", 12), ("T", 0), ("T0", 0),
    ("T3", 3), ("3", 3), ("", 0), (None, 0), ("tool 2", 2), (2, 2),
])
def test_tool_names_map_to_numbers_by_trailing_integer(name, number):
    assert m.tool_index(name) == number


# -- drive: microsteps and backlash ------------------------------------------

def test_quantize_rounds_to_whole_microsteps():
    assert m.quantize(100.004, 0.0125) == pytest.approx(100.0)
    assert m.quantize(100.007, 0.0125) == pytest.approx(100.0125)
    assert m.quantize(-0.02, 0.0125) == pytest.approx(-0.025)
    assert m.quantize(1.23456, 0) == 1.23456


def test_backlash_lags_half_the_play_opposite_to_the_motion():
    b = 0.05
    carriage = m.take_up_backlash(10.0, 11.0, b)       # moving +
    assert carriage == pytest.approx(11.0 - b / 2)
    carriage = m.take_up_backlash(carriage, 10.0, b)   # reversed, moving -
    assert carriage == pytest.approx(10.0 + b / 2)


def test_small_reversal_inside_the_play_does_not_move_the_carriage():
    b = 0.05
    carriage = m.take_up_backlash(10.0, 11.0, b)
    assert m.take_up_backlash(carriage, 11.0 - 0.03, b) == pytest.approx(carriage)
    # Going on in the same direction moves it one for one.
    assert m.take_up_backlash(carriage, 11.2, b) == pytest.approx(11.2 - b / 2)


def test_machine_lag_depends_on_the_direction_of_the_last_move():
    machine = m.Machine([[0, 0]], backlash=0.1, step=0.0125, start_xy=(50, 50))
    from_left = machine.command(1.0, [60.0, 40.0, 5.0], "extruder")
    assert from_left.carriage == pytest.approx((60.0 - 0.05, 40.0 + 0.05))
    machine.command(2.0, [70.0, 30.0], "extruder")
    from_right = machine.command(3.0, [60.0, 40.0], "extruder")
    assert from_right.carriage == pytest.approx((60.0 + 0.05, 40.0 - 0.05))
    # The same commanded point, reached from opposite sides: one backlash apart.
    assert from_right.carriage[0] - from_left.carriage[0] == pytest.approx(0.1)


def test_moves_replay_an_approach_detour_so_the_lag_is_always_the_same():
    """Reaching a point via target - approach leaves the same lag whatever came before."""
    machine = m.Machine([[0, 0]], backlash=0.05, step=0.0125, start_xy=(0, 0))
    results = []
    for previous in ([10.3, 10.3], [9.7, 9.7], [10.3, 9.7]):
        machine.command(len(results) * 2 + 1.0, previous, "T0")
        state = machine.command(len(results) * 2 + 2.0, [10.0, 10.0], "T0",
                                moves=[[9.5, 9.5]])
        results.append(state.carriage)
    for carriage in results:
        assert carriage == pytest.approx((10.0 - 0.025, 10.0 - 0.025))


def test_physical_position_is_a_whole_number_of_microsteps():
    step = 0.0125
    machine = m.Machine([[0, 0], [0.123, -0.456]], backlash=0.0, step=step)
    rng = np.random.default_rng(3)
    for k, target in enumerate(rng.uniform(-5, 5, size=(20, 2))):
        state = machine.command(float(k), target, "T0")
        for axis in (0, 1):
            steps = state.carriage[axis] / step
            assert steps == pytest.approx(round(steps), abs=1e-9)
            assert abs(state.carriage[axis] - target[axis]) <= step / 2 + 1e-12


def test_nozzle_is_carriage_plus_tool_offset():
    machine = m.Machine([[0, 0], [0.3, -0.2]], step=0.0)
    state = machine.command(1.0, [10.0, 20.0], "extruder1")
    assert state.tool == 1
    assert state.nozzle == pytest.approx((10.3, 19.8))
    assert machine.truth() == [pytest.approx([0, 0]), pytest.approx([-0.3, 0.2])]


def test_state_at_looks_back_through_the_timeline():
    machine = m.Machine([[0, 0]], step=0.0, start_xy=(1, 1))
    machine.command(10.0, [2, 2], "T0")
    machine.command(11.0, [3, 3], "T0")
    assert machine.state_at(9.0).commanded == (1, 1)
    assert machine.state_at(10.5).commanded == (2, 2)
    assert machine.state_at(11.0).commanded == (3, 3)
    assert machine.state_at(99.0).commanded == (3, 3)


def test_tool_offsets_come_from_the_seed_and_tool_zero_is_the_reference():
    a = SimCamera("sim://?seed=5&tools=3&offset_range=0.8").truth()
    b = SimCamera("sim://?seed=5&tools=3&offset_range=0.8").truth()
    c = SimCamera("sim://?seed=6&tools=3&offset_range=0.8").truth()
    assert a["tools"] == b["tools"] != c["tools"]
    assert a["tools"][0] == [0.0, 0.0]
    assert len(a["tools"]) == 3
    for tool, offset in zip(a["tools"], a["nozzle_offsets"]):
        assert tool == pytest.approx([-offset[0], -offset[1]])
        assert max(abs(offset[0]), abs(offset[1])) <= 0.8


# -- camera model --------------------------------------------------------------

def _fit_affine(xy, uv):
    """Least-squares x = a u + b v + c, y = d u + e v + f (protocol.md's model)."""
    design = np.column_stack([uv, np.ones(len(uv))])
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    return coef[:2].T   # [[a, b], [d, e]]


@pytest.mark.parametrize("rotation, mirror", [(0, 1), (0, 0), (30, 1), (-120, 0), (90, 1)])
def test_camera_model_matches_what_a_fit_reports(rotation, mirror):
    camera = m.CameraModel((640, 480), 0.012, rotation, bool(mirror), (100.0, 50.0))
    toolhead = np.random.default_rng(1).uniform(-1, 1, size=(12, 2)) + [100.0, 50.0]
    offset = np.array([0.2, -0.1])   # a tool offset only shifts the fit's constant
    uv = np.array([camera.pixel_of(p + offset) for p in toolhead])
    a, b, d, e = _fit_affine(toolhead, uv).ravel()
    assert math.degrees(math.atan2(d, a)) == pytest.approx(rotation % 360 if rotation % 360 <= 180
                                                           else rotation % 360 - 360, abs=1e-6)
    assert (a * e - b * d > 0) == bool(mirror)
    assert math.sqrt(abs(a * e - b * d)) == pytest.approx(0.012)


def test_camera_model_round_trip_and_centre():
    camera = m.CameraModel((640, 480), 0.01, 37.0, True, (100.0, 50.0))
    assert camera.pixel_of((100.0, 50.0)) == pytest.approx((319.5, 239.5))
    for pixel in [(0, 0), (639, 479), (123.4, 56.7)]:
        assert camera.pixel_of(camera.machine_of(pixel)) == pytest.approx(pixel)


def test_unrotated_upward_camera_axes():
    camera = m.CameraModel((640, 480), 0.01, 0.0, True, (0.0, 0.0))
    assert camera.pixel_of((0.1, 0.0)) == pytest.approx((329.5, 239.5))   # +x -> +u
    assert camera.pixel_of((0.0, 0.1)) == pytest.approx((319.5, 249.5))   # +y -> +v (mirrored)
    flipped = m.CameraModel((640, 480), 0.01, 0.0, False, (0.0, 0.0))
    assert flipped.pixel_of((0.0, 0.1)) == pytest.approx((319.5, 229.5))


# -- URL -----------------------------------------------------------------------

def test_url_defaults_and_values():
    s = parse_sim_url("sim://?width=320&height=240&backlash=0.05&mirror=0&rotation=-15")
    assert (s["width"], s["height"], s["backlash"], s["mirror"], s["rotation"]) == \
        (320, 240, 0.05, 0, -15.0)
    assert parse_sim_url("sim://")["mm_per_px"] == 0.01


@pytest.mark.parametrize("url, words", [
    ("sim://?colour=red", "Unknown sim:// camera key 'colour'"),
    ("sim://?fps=abc", "not a number"),
    ("sim://?mm_per_px=5", "outside"),
    ("sim://?fps=nan", "outside"),
    ("sim://?width=nan", "not a number"),
    ("http://x/?seed=1", "not a sim:// camera URL"),
    ("sim://?disc=10,20", "must be u,v,r"),
    ("sim://?disc=10,20,0", "must be u,v,r"),
    ("sim://?disc=a,b,c", "must be u,v,r"),
])
def test_bad_url_is_a_clear_error(url, words):
    with pytest.raises(HelperError) as info:
        parse_sim_url(url)
    assert info.value.code == "invalid_params"
    assert words in info.value.message


# -- frames: timing, latency, what they show -------------------------------------

def test_frames_honour_not_before_and_tick_at_fps():
    camera = SimCamera("sim://?fps=20&width=160&height=120&mm_per_px=0.04")
    start = time.monotonic()
    not_before = start + 0.3
    frame = camera.get_frame(not_before=not_before, timeout=5)
    assert frame.timestamp >= not_before
    assert frame.timestamp - not_before < 1 / 20 + 1e-9
    assert time.monotonic() >= not_before
    assert frame.timestamp * 20 == pytest.approx(round(frame.timestamp * 20))
    assert frame.size == (160, 120) and frame.image.dtype == np.uint8
    later = camera.get_frame(not_before=frame.timestamp + 1e-6, timeout=5)
    ticks_later = (later.timestamp - frame.timestamp) * 20
    assert ticks_later >= 1 - 1e-9     # a newer frame, on the frame clock
    assert ticks_later == pytest.approx(round(ticks_later))


def test_without_not_before_the_newest_frame_comes_at_once():
    camera = SimCamera("sim://?fps=2&width=160&height=120&mm_per_px=0.04")
    before = time.monotonic()
    frame = camera.get_frame(timeout=5)
    assert before - 0.5 - 1e-6 <= frame.timestamp <= before
    assert time.monotonic() - before < 0.45   # did not wait for the next tick


def test_frames_show_where_the_nozzle_was_latency_seconds_ago():
    # A long latency, so a busy machine's scheduling delays cannot blur it.
    camera = SimCamera("sim://?fps=20&latency=1.0&width=160&height=120&mm_per_px=0.04"
                       "&step=0&camera_x=10&camera_y=10")
    camera.set_machine_state([10.0, 10.0, 0.0], "T0")
    time.sleep(1.1)
    camera.set_machine_state([10.4, 10.0, 0.0], "T0")
    moved = time.monotonic()
    stale = camera.get_frame(not_before=moved, timeout=5)
    fresh = camera.get_frame(not_before=moved + 1.05, timeout=5)
    stale_state, stale_pixel = camera.shown(stale)
    fresh_state, fresh_pixel = camera.shown(fresh)
    assert stale.timestamp < moved + 1.0    # a frame less than `latency` after the move ...
    assert stale_state.commanded == (10.0, 10.0)                  # ... shows the old place
    assert stale_pixel == pytest.approx((79.5, 59.5))
    assert fresh_state.commanded == (10.4, 10.0)
    assert fresh_pixel == pytest.approx((79.5 + 10, 59.5))


def test_timeout_when_no_frame_comes_in_time():
    camera = SimCamera("sim://?fps=10&width=160&height=120&mm_per_px=0.04")
    start = time.monotonic()
    with pytest.raises(HelperError) as info:
        camera.get_frame(not_before=start + 30, timeout=0.3)
    elapsed = time.monotonic() - start
    assert info.value.code == "camera_timeout"
    assert 0.25 <= elapsed < 5


def test_close_fails_a_waiting_request_promptly():
    camera = SimCamera("sim://?fps=10&width=160&height=120&mm_per_px=0.04")
    errors = []

    def wait():
        try:
            camera.get_frame(not_before=time.monotonic() + 20, timeout=25)
        except HelperError as exc:
            errors.append(exc.code)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    camera.close()
    thread.join(5)
    assert not thread.is_alive()
    assert errors == ["camera_unreachable"]


def test_active_tool_and_its_offset_move_the_picture():
    url = "sim://?seed=3&tools=3&offset_range=0.5&latency=0&step=0&camera_x=100&camera_y=100"
    camera = SimCamera(url)
    truth = camera.truth()
    for tool, name in enumerate(["extruder", "extruder1", "extruder2"]):
        camera.set_machine_state([100.0, 100.0, 5.0], name)
        state, pixel = camera.shown(camera.get_frame(time.monotonic(), timeout=5))
        assert state.tool == tool
        expected = camera.camera.pixel_of(np.array([100.0, 100.0]) + truth["nozzle_offsets"][tool])
        assert pixel == pytest.approx(expected)
        # Moving the toolhead by the truth brings the tool's nozzle to the centre.
        camera.set_machine_state([100.0 + truth["tools"][tool][0],
                                  100.0 + truth["tools"][tool][1], 5.0], name)
        state, pixel = camera.shown(camera.get_frame(time.monotonic(), timeout=5))
        assert pixel == pytest.approx((319.5, 239.5), abs=1e-6)


def test_nozzle_out_of_view_renders_no_nozzle():
    camera = SimCamera("sim://?latency=0&width=160&height=120&mm_per_px=0.04&noise=0&jpeg=0")
    camera.set_machine_state([0.0, 0.0, 0.0], "T0")
    inside = camera.get_frame(time.monotonic(), timeout=5)
    camera.set_machine_state([5.0, 0.0, 0.0], "T0")    # 125 px right of the centre
    outside = camera.get_frame(time.monotonic(), timeout=5)
    assert camera.shown(inside)[1] == pytest.approx((79.5, 59.5))
    assert camera.shown(outside)[1] is None
    # A dark bore inside a bright collar at the centre of the first frame only.
    def bore_contrast(image):
        gray = image.mean(axis=2)
        yy, xx = np.mgrid[0:120, 0:160]
        r = np.hypot(xx - 79.5, yy - 59.5)
        return gray[(r > 5.5) & (r < 7)].mean() - gray[r < 3].mean()
    assert bore_contrast(inside.image) > 30
    assert abs(bore_contrast(outside.image)) < 10


def test_a_static_disc_stays_at_its_pixel_and_changes_nothing_else():
    from ktamv_helper.detection.search import find_bore
    # No JPEG, whose 8x8 blocks would spread the disc's edge a little.
    base = "sim://?seed=7&latency=0&camera_x=150&camera_y=150&jpeg=0"
    plain, disc = SimCamera(base), SimCamera(base + "&disc=540,110,20")
    assert disc.settings["disc"] == (540.0, 110.0, 20.0)
    yy, xx = np.mgrid[0:480, 0:640]
    outside = np.hypot(xx - 540, yy - 110) > 2.5 * 20 + 2
    centres = []
    for x in (150.0, 150.5):
        for camera in (plain, disc):
            camera.set_machine_state([x, 150.0, 5.0], "T0")
        later = time.monotonic() + 1
        with_disc, without = (c.render(c.state_at(later), 3)[0] for c in (disc, plain))
        # The same frame (noise included) away from the disc: the key adds
        # no randomness, so sim:// frames without it are unchanged.
        assert np.array_equal(with_disc[outside], without[outside])
        assert not np.array_equal(with_disc[~outside], without[~outside])
        found = find_bore(with_disc)
        assert found.refusal == "ambiguous"     # the disc looks like a bore
        # The disc (right of the nozzle) first.
        centres.append(sorted((d.center for d in found.candidates), key=lambda c: -c[0]))
    # The disc stays put while the nozzle moves 50 px (0.5 mm).
    (disc0, nozzle0), (disc1, nozzle1) = centres
    assert disc0 == pytest.approx((540, 110), abs=0.2)
    assert disc1 == pytest.approx(disc0, abs=0.1)
    shift = math.hypot(nozzle1[0] - nozzle0[0], nozzle1[1] - nozzle0[1])
    assert shift == pytest.approx(50.0, abs=0.3)
    for camera in (plain, disc):
        camera.close()


def test_tools_look_different_and_noise_changes_per_frame():
    camera = SimCamera("sim://?seed=2&tools=3&latency=0&width=160&height=120&mm_per_px=0.04")
    assert camera.look(0) != camera.look(1)
    camera.set_machine_state([0.0, 0.0, 0.0], "T0")
    first = camera.get_frame(time.monotonic(), timeout=5)
    second = camera.get_frame(first.timestamp + 1e-6, timeout=5)
    diff = np.abs(first.image.astype(int) - second.image.astype(int))
    assert 0.3 < diff.mean() < 20     # same scene, fresh sensor noise


def test_concurrent_readers_and_state_updates():
    camera = SimCamera("sim://?fps=30&width=160&height=120&mm_per_px=0.04")
    failures, counts = [], []

    def read():
        last, n = -1.0, 0
        try:
            for _ in range(6):
                frame = camera.get_frame(last + 1e-6 if last > 0 else None, timeout=5)
                if frame.timestamp <= last:
                    failures.append("out of order")
                last, n = frame.timestamp, n + 1
        except Exception as exc:   # anything at all is a failure here
            failures.append(repr(exc))
        counts.append(n)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for k in range(30):
        camera.set_machine_state([0.01 * k, 0.0, 0.0], "T%d" % (k % 2))
        time.sleep(0.005)
    for thread in readers:
        thread.join(30)
    assert failures == []
    assert counts == [6, 6, 6]


def test_record_writes_frames_and_an_index(tmp_path):
    folder = tmp_path / "frames"
    camera = SimCamera("sim://?latency=0&width=160&height=120&mm_per_px=0.04&record=%s" % folder)
    camera.set_machine_state([0.1, 0.0, 0.0], "extruder1")
    frame = camera.get_frame(time.monotonic(), timeout=5)
    camera.get_frame(frame.timestamp + 1e-6, timeout=5)
    lines = (folder / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 2
    import json
    entry = json.loads(lines[0])
    assert entry["tool"] == 1 and entry["commanded"] == [0.1, 0.0]
    assert (folder / entry["file"]).stat().st_size > 1000


# -- rendering where the physics says, and the detector agrees --------------------

@pytest.mark.parametrize("rotation, mirror, tool", [(0, 1, 0), (25, 1, 1), (-140, 0, 2)])
def test_detector_finds_the_bore_at_the_predicted_pixel(rotation, mirror, tool):
    detection = pytest.importorskip("ktamv_helper.detection")
    camera = SimCamera("sim://?seed=4&tools=3&latency=0&backlash=0.05&camera_x=50&camera_y=60"
                       "&rotation=%s&mirror=%s" % (rotation, mirror))
    camera.set_machine_state([50.137, 59.921, 0.0], "T%d" % tool)
    errors = []
    last = None
    for _ in range(3):
        frame = camera.get_frame(last and last + 1e-6, timeout=5)
        last = frame.timestamp
        state, pixel = camera.shown(frame)
        found = detection.detect_nozzle(frame.image)
        assert found is not None
        errors.append(math.hypot(found.center[0] - pixel[0], found.center[1] - pixel[1]))
    assert np.median(errors) < 0.25


def test_corexy_quantises_the_a_and_b_motors():
    step = 0.0125
    machine = m.Machine([[0, 0]], step=step, kinematics="corexy")
    rng = np.random.default_rng(8)
    for k, target in enumerate(rng.uniform(-5, 5, size=(20, 2))):
        x, y = machine.command(float(k), target, "T0").carriage
        for motor in (x + y, x - y):
            assert motor / step == pytest.approx(round(motor / step), abs=1e-9)
        assert abs((x + y) - (target[0] + target[1])) <= step / 2 + 1e-12
    # A point on the cartesian step grid is reachable exactly on corexy too.
    assert m.quantize_xy((1.025, -0.0375), step, "corexy") == pytest.approx((1.025, -0.0375))
    # Half steps on X alone are not: A and B must both move whole steps.
    assert m.quantize_xy((0.00625, 0.0), step, "corexy") != pytest.approx((0.00625, 0.0))
    with pytest.raises(HelperError):
        parse_sim_url("sim://?kinematics=delta")


# -- through the helper process, as the extra uses it ------------------------------

def test_helper_process_renders_from_the_machine_state_and_reports_truth():
    import json
    import os
    import select
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "ktamv_helper"], cwd=repo,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)

    def read_reply(request_id, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                message = json.loads(proc.stdout.readline())
                if message.get("id") == request_id:
                    return message
        raise AssertionError("no reply to request %d" % request_id)

    def call(request_id, method, params):
        proc.stdin.write((json.dumps({"id": request_id, "method": method,
                                      "params": params}) + "\n").encode())
        proc.stdin.flush()
        return read_reply(request_id)

    url = ("sim://?seed=9&tools=2&offset_range=0.6&latency=0.05&backlash=0.05"
           "&camera_x=120&camera_y=80&rotation=40")
    try:
        assert call(1, "configure", {"camera_url": url}).get("result") is not None
        truth = call(2, "sim_truth", {})["result"]
        camera = SimCamera(url)      # same URL, same truth
        assert truth["tools"] == camera.truth()["tools"]
        position = [120.3, 79.8, 5.0]
        reply = call(3, "detect", {
            "frames": 3, "not_before": time.monotonic() + 0.15,
            "machine": {"position": position, "tool": "extruder1",
                        "moves": [[119.5, 79.0, 5.0]]}})
        assert "result" in reply, reply
        # Where tool 1's nozzle must appear: approached moving +X +Y, so the
        # carriage trails the (microstep) position by half the backlash.
        nozzle = (np.array(m.quantize_xy(position, 0.0125)) - 0.025
                  + truth["nozzle_offsets"][1])
        expected = camera.camera.pixel_of(nozzle)
        found = reply["result"]["center"]
        assert math.hypot(found[0] - expected[0], found[1] - expected[1]) < 0.3
    finally:
        proc.stdin.close()
        proc.wait(10)


def test_url_overrides_the_drawn_looks_and_sensor():
    camera = SimCamera("sim://?seed=3&tools=2&blur=0&dirt=1&glints=0&noise=7&jpeg=80")
    for tool in (0, 1):
        look = camera.look(tool)
        assert (look.blur_sigma, look.dirt, look.glints) == (0.0, 1.0, 0)
        assert camera.sensor(tool) == (7.0, 80)
    drawn = SimCamera("sim://?seed=3&tools=2")
    assert drawn.sensor(0) != drawn.sensor(1)


def test_unwritable_record_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(HelperError) as info:
        SimCamera("sim://?record=%s" % (blocker / "frames"))
    assert info.value.code == "invalid_params"
    assert "cannot record into" in info.value.message


def test_recording_failure_never_stops_the_frames(tmp_path):
    folder = tmp_path / "frames"
    camera = SimCamera("sim://?latency=0&width=160&height=120&mm_per_px=0.04&record=%s" % folder)
    first = camera.get_frame(time.monotonic(), timeout=5)
    import shutil
    shutil.rmtree(folder)           # the folder vanishes (disk unmounted, cleaned up)
    second = camera.get_frame(first.timestamp + 1e-6, timeout=5)
    assert second.timestamp > first.timestamp and second.image.shape == (120, 160, 3)


def test_the_frame_after_one_is_the_next_tick_and_the_first_state_was_always():
    from ktamv_helper.cameras.sim import SimCamera
    from ktamv_helper.freshness import just_after
    camera = SimCamera("sim://?seed=3&fps=30&latency=0.08&camera_x=150"
                       "&camera_y=150")
    try:
        camera.set_machine_state([151.0, 150.0, 0.0], "extruder")
        first = camera.get_frame(timeout=2.0)
        second = camera.get_frame(not_before=just_after(first.timestamp),
                                  timeout=2.0)
        # Never the same frame twice (consensus would count it again).
        assert second.timestamp == pytest.approx(first.timestamp + 1 / 30.0)
        # Frames right after opening show where the machine already was,
        # not the camera's default position.
        assert camera.shown(first)[0].commanded[0] == pytest.approx(151.0)
    finally:
        camera.close()
