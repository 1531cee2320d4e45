"""Fast tests of ktamv.py's own logic with a small fake printer.

The maths (camera model, statistics), the motion rules (backlash approach,
step snapping, travel fence, homing) and the centring loop run here against
stand-ins for Klipper's toolhead and config; everything that needs Klipper's
reactor and a helper process is tested in test_extra_klippy.py.
"""

import importlib.util
import math
import statistics
import sys
import types

import pytest

from klippy_harness import KLIPPY_VENV, REPO

sys.path.insert(0, str(REPO))
import ktamv  # noqa: E402


def _klippy_gcode_module():
    """Klipper's own gcode.py (standard library only), so G-code parameters
    are parsed and bounded exactly as Klippy does it."""
    found = sorted((KLIPPY_VENV / "lib").glob(
        "python3*/site-packages/klippy/gcode.py"))
    if not found:
        pytest.skip("no klippy package; run test/setup.sh")
    spec = importlib.util.spec_from_file_location("klippy_gcode", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


klippy_gcode = _klippy_gcode_module()
CommandError = klippy_gcode.CommandError


class ConfigError(Exception):
    pass


class FakeStepper:
    """A motor whose position is linear in X, Y, Z (cartesian, corexy...).

    ``step0`` is where its step 0 lies in its own coordinate, as Klipper's
    mcu_to_commanded_position(0) reports it after homing.
    """

    def __init__(self, jx, jy, jz, step_dist, step0=0.0, name="stepper"):
        self.j = (jx, jy, jz)
        self.step_dist = step_dist
        self.step0 = step0
        self.name = name

    def calc_position_from_coord(self, coord):
        return sum(j * c for j, c in zip(self.j, coord[:3]))

    def mcu_to_commanded_position(self, mcu_pos):
        return self.step0 + mcu_pos * self.step_dist

    def get_step_dist(self):
        return self.step_dist


class DeltaTower(FakeStepper):
    """A delta tower: carriage height is non-linear in X and Y."""

    def __init__(self, tx, ty, step_dist=0.0125, arm=250.0):
        FakeStepper.__init__(self, 0, 0, 1, step_dist)
        self.tower = (tx, ty)
        self.arm = arm

    def calc_position_from_coord(self, coord):
        dx = self.tower[0] - coord[0]
        dy = self.tower[1] - coord[1]
        return math.sqrt(self.arm ** 2 - dx * dx - dy * dy) + coord[2]


def corexy_steppers(step_dist=0.0125):
    return [FakeStepper(1, 1, 0, step_dist, name="stepper_a"),
            FakeStepper(1, -1, 0, step_dist, name="stepper_b"),
            FakeStepper(0, 0, 1, 0.0025, name="stepper_z")]


class FakeKinematics:
    def __init__(self, steppers=None):
        self.steppers = corexy_steppers() if steppers is None else steppers

    def get_steppers(self):
        return list(self.steppers)


class FakeToolhead:
    def __init__(self, homed="xyz", steppers=None):
        self.pos = [100.0, 100.0, 5.0, 0.0]
        self.homed = homed
        self.moves = []
        self.kinematics = FakeKinematics(steppers)

    def get_position(self):
        return list(self.pos)

    def manual_move(self, coord, speed):
        for i, value in enumerate(coord):
            if value is not None:
                self.pos[i] = value
        self.moves.append((tuple(self.pos[:2]), speed))

    def wait_moves(self):
        pass

    def get_status(self, eventtime):
        return {"homed_axes": self.homed, "axis_minimum": (0, 0, 0, 0),
                "axis_maximum": (300, 300, 200, 0)}

    def get_kinematics(self):
        return self.kinematics

    def get_extruder(self):
        return type("Extruder", (), {"get_name": lambda self: "extruder"})()


class FakeReactor:
    def monotonic(self):
        return 1000.0


class FakeGcode:
    def __init__(self):
        self.commands = {}

    def register_command(self, name, func, desc=None):
        self.commands[name] = func


class FakePrinter:
    command_error = CommandError
    config_error = ConfigError

    def __init__(self, toolhead=None):
        self.objects = {"toolhead": toolhead or FakeToolhead(),
                        "gcode": FakeGcode()}
        self.handlers = {}
        self.reactor = FakeReactor()

    def get_reactor(self):
        return self.reactor

    def lookup_object(self, name, default=ConfigError):
        if name in self.objects:
            return self.objects[name]
        if default is ConfigError:
            raise ConfigError("Unknown config object '%s'" % name)
        return default

    def register_event_handler(self, event, callback):
        self.handlers.setdefault(event, []).append(callback)

    shutdown = False

    def is_shutdown(self):
        return self.shutdown


class FakeConfig:
    """Klipper's ConfigWrapper getters (defaults, bounds, option names)."""

    error = ConfigError
    _missing = object()

    def __init__(self, printer, options):
        self.printer = printer
        self.options = dict(options)

    def get_printer(self):
        return self.printer

    def get_name(self):
        return "ktamv"

    def _get(self, option, default, parser, minval=None, maxval=None,
             above=None, below=None):
        if option not in self.options:
            if default is self._missing:
                raise ConfigError("Option '%s' in section 'ktamv' must be "
                                  "specified" % option)
            return default
        value = parser(self.options[option])
        for bound, bad in ((minval, lambda v, b: v < b),
                           (maxval, lambda v, b: v > b),
                           (above, lambda v, b: v <= b),
                           (below, lambda v, b: v >= b)):
            if bound is not None and bad(value, bound):
                raise ConfigError("Option '%s' in section 'ktamv' is out of "
                                  "range" % option)
        return value

    def get(self, option, default=_missing):
        return self._get(option, default, str)

    def getfloat(self, option, default=_missing, **bounds):
        return self._get(option, default, float, **bounds)

    def getint(self, option, default=_missing, **bounds):
        return self._get(option, default, int, **bounds)

    def getintlist(self, option, default=_missing, count=None):
        values = self.getfloatlist(option, default, count)
        return values if values is default else [int(v) for v in values]

    def getfloatlist(self, option, default=_missing, count=None):
        def parse(text):
            values = [float(v) for v in text.split(",")]
            if count is not None and len(values) != count:
                raise ConfigError("Option '%s' in section 'ktamv' must have "
                                  "%d values" % (option, count))
            return values
        return self._get(option, default, parse)


class FakeGcmd(klippy_gcode.GCodeCommand):
    """Klipper's real GCodeCommand (so minval/maxval/above are enforced),
    collecting respond_info text in ``info``."""

    def __init__(self, **params):
        self.info = []
        sink = types.SimpleNamespace(
            respond_info=lambda msg, log=True: self.info.append(msg),
            respond_raw=lambda msg: None)
        words = dict((key.upper(), str(value)) for key, value in
                     params.items())
        line = " ".join(["KTAMV_TEST_COMMAND"] + ["%s=%s" % kv for kv in
                                                  words.items()])
        klippy_gcode.GCodeCommand.__init__(self, sink, "KTAMV_TEST_COMMAND",
                                           line, words, False)


def make_ktamv(options=None, toolhead=None):
    printer = FakePrinter(toolhead)
    opts = {"nozzle_cam_url": "sim://", "helper_python": sys.executable}
    opts.update(options or {})
    extra = ktamv.Ktamv(FakeConfig(printer, opts))
    extra.motion.handle_connect()
    return extra, printer


# -- camera model ------------------------------------------------------------

def test_camera_model_derived_quantities():
    # 0.01 mm/px, image +u along machine +Y (90 deg), seen from below.
    model = ktamv.CameraModel([[0.0, 0.01], [0.01, 0.0]])
    assert model.mm_per_px() == pytest.approx(0.01)
    assert model.rotation_deg() == pytest.approx(90.0)
    assert model.mirrored() is False  # det = -1e-4
    assert model.px_to_mm(10, -20) == pytest.approx((-0.2, 0.1))
    flipped = ktamv.CameraModel([[0.01, 0.0], [0.0, 0.01]])
    assert flipped.mirrored() is True
    assert flipped.rotation_deg() == pytest.approx(0.0)


def test_camera_model_survives_its_config_text():
    model = ktamv.CameraModel([[0.0101234567, -0.0001],
                               [0.00012, -0.0099876543]])
    text = model.config_value()
    again = ktamv.CameraModel.from_flat([float(v) for v in text.split(",")])
    assert again.flat() == pytest.approx(model.flat(), rel=1e-8)


def test_image_center_uses_pixel_centres():
    assert ktamv.image_center((640, 480)) == (319.5, 239.5)
    assert ktamv.image_center((5, 3)) == (2.0, 1.0)


def test_calibration_circle_keeps_a_zoomed_camera_s_bore_in_view():
    fit = ktamv.fitted_calibration_radius
    # A usual camera (0.4 mm bore, 20 px: ~100 px/mm) keeps 0.5 mm: 52 px
    # of the 199 px of room round a centred bore.
    usual = {'uv': [320., 240.], 'radius': 20., 'edge_width': 1.,
             'frame_size': [640, 480]}
    assert fit(0.5, usual, 0.4) == 0.5
    # Off-centre, the room is to the nearest edge less two bore radii:
    # 130 - 60 = 70 px at 150 px/mm (rounded down to a micron).
    near_edge = dict(usual, uv=[130., 240.], radius=30., edge_width=0.)
    assert fit(0.5, near_edge, 0.4) == 0.466
    # A microscope's bore (133 px, half the frame): at least a tenth of the
    # short side, 48 px at (133 + 2) / 0.2 = 675 px/mm.
    zoomed = {'uv': [333., 233.], 'radius': 133., 'edge_width': 2.,
              'frame_size': [640, 480]}
    assert fit(0.5, zoomed, 0.4) == pytest.approx(48. / 675., abs=0.001)
    # A defocused edge counts as more pixels per mm: a smaller circle.
    assert fit(0.5, dict(zoomed, edge_width=20.), 0.4) < fit(0.5, zoomed, 0.4)
    # A 0.8 mm nozzle the same size in the frame: half the pixels per mm.
    assert fit(0.5, zoomed, 0.8) == pytest.approx(2. * fit(0.5, zoomed, 0.4),
                                                  abs=0.002)
    # Never below G-code's resolution.
    assert fit(0.5, dict(zoomed, radius=1e5), 0.4) == 0.001


def test_offset_statistics_match_the_statistics_module():
    samples = [(0.101, -0.050), (0.103, -0.047), (0.098, -0.052),
               (0.100, -0.049)]
    st = ktamv.offset_statistics(samples)
    xs, ys = zip(*samples)
    assert st["count"] == 4
    assert st["mean"] == pytest.approx([statistics.mean(xs),
                                        statistics.mean(ys)])
    assert st["stdev"] == pytest.approx([statistics.stdev(xs),
                                         statistics.stdev(ys)])
    assert st["range"] == pytest.approx([0.005, 0.005])
    assert ktamv.offset_statistics([(1.0, 2.0)])["stdev"] == [0.0, 0.0]
    assert ktamv.offset_statistics([]) == {"count": 0}


# -- motion ------------------------------------------------------------------

def make_motion(backlash=0.5, max_travel=2.0, homed="xyz"):
    printer = FakePrinter(FakeToolhead(homed))
    motion = ktamv.KtamvMotion(printer, 30.0, backlash, max_travel)
    motion.handle_connect()
    return motion, printer.objects["toolhead"]


def test_motion_requires_x_and_y_homed():
    motion, _ = make_motion(homed="z")
    with pytest.raises(CommandError, match="G28"):
        motion.begin()
    motion, _ = make_motion(homed="xy")
    assert motion.begin() == (100.0, 100.0)


def test_every_target_is_reached_moving_plus_x_and_plus_y():
    motion, toolhead = make_motion(backlash=0.5)
    motion.begin()
    for target in [(100.3, 99.8), (99.7, 100.2), (100.9, 100.9)]:
        toolhead.moves.clear()
        before = toolhead.get_position()
        motion.move_to(*target)
        last_from = before[:2] if len(toolhead.moves) == 1 else \
            toolhead.moves[-2][0]
        end = toolhead.moves[-1][0]
        assert end == pytest.approx(target, abs=0.00625)
        # The final leg moves +X and +Y by at least the backlash.
        assert end[0] - last_from[0] >= 0.5 - 1e-9
        assert end[1] - last_from[1] >= 0.5 - 1e-9


def test_moves_snap_to_whole_steps_and_are_reported_for_the_camera():
    motion, toolhead = make_motion(backlash=0.0)
    motion.begin()
    motion.move_to(100.1234, 99.9871)
    x, y = toolhead.get_position()[:2]
    assert x / 0.0125 == pytest.approx(round(x / 0.0125), abs=1e-6)
    assert (x, y) == pytest.approx((100.125, 99.9875))
    assert motion.take_moves() == [[x, y, 5.0]]
    assert motion.take_moves() == []


def test_travel_fence_refuses_before_any_motion():
    motion, toolhead = make_motion(backlash=0.5, max_travel=1.0)
    motion.begin()
    with pytest.raises(CommandError, match="max_travel"):
        # The target is 0.73 mm away but its approach point 1.24 mm.
        motion.move_to(100.2, 99.3)
    assert toolhead.moves == []
    with pytest.raises(CommandError, match="outside the printer's limits"):
        motion.fence_start = None
        motion.move_to(301.0, 100.0)
    assert toolhead.moves == []


# -- configuration -----------------------------------------------------------

def test_defaults_and_kTAMV_compatible_options():
    extra, printer = make_ktamv({"server_url": "http://x", "move_speed": "600"})
    assert extra.opts.move_speed == 600.0
    assert extra.motion.speed == pytest.approx(10.0)
    assert extra.opts.calibration_points == 10
    assert extra.opts.calibration_radius == 0.5
    assert extra.opts.center_tolerance < 1.0
    assert sorted(printer.objects["gcode"].commands) == sorted(
        "KTAMV_" + c for c in (
            "CALIB_CAMERA", "FIND_NOZZLE_CENTER", "SET_ORIGIN", "GET_OFFSET",
            "MOVE_TO_ORIGIN", "SIMPLE_NOZZLE_POSITION", "TEST",
            "START_PREVIEW", "STOP_PREVIEW", "SEND_SERVER_CFG",
            "OFFSET_STATISTICS", "VERIFY_OFFSET", "PROGRESS"))
    assert extra.verifier.tolerance == 0.01
    status = extra.get_status(0.0)
    assert status["is_calibrated"] is False
    assert status["travel_speed"] == 600.0
    assert status["last_calculated_offset"] == [0.0, 0.0]
    assert status["helper_state"] == "stopped"


def test_helper_command_line():
    extra, _ = make_ktamv({"helper_python": "/opt/env/bin/python",
                           "helper_nice": "0"})
    assert extra.opts.helper_argv() == ["/opt/env/bin/python", "-m",
                                    "ktamv_helper"]
    extra, _ = make_ktamv({"helper_python": "/opt/env/bin/python"})
    argv = extra.opts.helper_argv()
    assert argv[0].endswith("nice") and argv[1:3] == ["-n", "10"]
    assert argv[3:] == ["/opt/env/bin/python", "-m", "ktamv_helper"]
    assert extra.helper.cwd == str(REPO)
    assert extra.helper.env["PYTHONPATH"].split(":")[0] == str(REPO)
    extra, _ = make_ktamv({"helper_nice": "0", "helper_command":
                           "ssh box '~/ktamv env/bin/python' -m ktamv_helper"})
    assert extra.opts.helper_argv() == ["ssh", "box", "~/ktamv env/bin/python",
                                    "-m", "ktamv_helper"]


@pytest.mark.parametrize("options, words", [
    ({"camera_matrix": "0, 0, 0, 0"}, "camera_matrix"),
    ({"camera_matrix": "1, 0, 0, 1"}, "camera_matrix"),
    ({"tool_status": "nodot"}, "tool_status"),
    ({"max_travel": "0"}, "max_travel"),
])
def test_bad_options_name_themselves(options, words):
    with pytest.raises(ConfigError, match=words):
        make_ktamv(options)


def test_saved_camera_matrix_is_loaded():
    extra, _ = make_ktamv({"camera_matrix": "0.01, 0, 0, 0.01"})
    assert extra.get_status(0.0)["is_calibrated"] is True
    assert extra.get_status(0.0)["mm_per_pixels"] == pytest.approx(0.01)


# -- centring loop against a simulated camera --------------------------------

class LinearCamera:
    """Nozzle pixel from the toolhead position: uv = c + A^-1 (p - p0)."""

    def __init__(self, toolhead, true_matrix, nozzle_xy, lose_after=None):
        self.toolhead = toolhead
        (a, b), (d, e) = true_matrix
        det = a * e - b * d
        self.inverse = [[e / det, -b / det], [-d / det, a / det]]
        self.nozzle_xy = nozzle_xy  # toolhead XY that centres the nozzle
        self.calls = 0
        self.lose_after = lose_after
        self.prediction_errors = []     # px, of every 'near' hint

    def __call__(self, gcmd, frames=None, after_move=True, reference=None,
                 hints=None, scale=True):
        self.calls += 1
        if self.lose_after is not None and self.calls > self.lose_after:
            error = gcmd.error("kTAMV: No nozzle found in 3 frames.")
            error.helper_code = "nozzle_not_found"
            raise error
        x, y = self.toolhead.get_position()[:2]
        dx, dy = x - self.nozzle_xy[0], y - self.nozzle_xy[1]
        inv = self.inverse
        u = 319.5 + inv[0][0] * dx + inv[0][1] * dy
        v = 239.5 + inv[1][0] * dx + inv[1][1] * dy
        near = (hints or {}).get("near")
        if near is not None:
            # As the helper does: only a bore within reach of the prediction.
            self.prediction_errors.append(math.hypot(u - near[0], v - near[1]))
            if self.prediction_errors[-1] > near[2]:
                error = gcmd.error("kTAMV: The nozzle is not where the camera "
                                   "model says the move put it.")
                error.helper_code = "nozzle_not_where_expected"
                raise error
        return {"uv": [u, v], "frame_size": [640, 480], "radius": 20.0,
                "score": 1.0, "frames": 3, "position": [x, y],
                "tool": "extruder"}


def centring_setup(model_matrix, true_matrix, start_offset, **kw):
    toolhead = FakeToolhead()
    extra, _ = make_ktamv({"backlash_approach": "0.5", "max_travel": "5"},
                          toolhead)
    extra.finder.model = ktamv.CameraModel(model_matrix)
    nozzle = (100.0 - start_offset[0], 100.0 - start_offset[1])
    camera = LinearCamera(toolhead, true_matrix, nozzle, **kw)
    extra.finder.detect = camera
    return extra, toolhead, nozzle


MATRIX = [[0.0, 0.01], [0.01, 0.0]]  # 0.01 mm/px, rotated, from below


def test_centring_from_1mm_off_takes_at_most_3_moves():
    extra, toolhead, nozzle = centring_setup(MATRIX, MATRIX, (0.6, -0.8))
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(gcmd)
    assert 1 <= extra.finder.last_center_moves <= 3
    assert extra.last_nozzle_center_successful is True
    x, y = toolhead.get_position()[:2]
    assert math.hypot(x - nozzle[0], y - nozzle[1]) <= 0.0125
    assert "nozzle centred" in gcmd.info[-1]


def test_centring_with_a_5_percent_scale_error_still_converges():
    true = [[0.0, 0.0105], [0.0105, 0.0]]
    extra, toolhead, nozzle = centring_setup(MATRIX, true, (0.6, -0.8))
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    assert extra.finder.last_center_moves <= 4


def test_centring_with_a_wrong_model_fails_clearly():
    # Model with X and Y swapped the wrong way round: the first move shows
    # the nozzle nowhere near where the model puts it, so centring stops
    # there instead of moving on the wrong way.
    wrong = [[0.0, -0.01], [-0.01, 0.0]]
    extra, toolhead, _ = centring_setup(wrong, MATRIX, (0.2, 0.1))
    with pytest.raises(CommandError, match="the camera model is off after "
                                           "centring move 1. kTAMV: The nozzle "
                                           "is not where the camera model"):
        extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    assert extra.last_nozzle_center_successful is False
    assert extra.finder.last_center_moves == 1


def test_centring_looks_for_the_nozzle_where_each_move_put_it():
    # With a right model every prediction is within a pixel (whole steps of
    # 0.0125 mm at 0.01 mm/px), and 5 % scale error stays within reach.
    for true in (MATRIX, [[0.0, 0.0105], [0.0105, 0.0]]):
        extra, _, _ = centring_setup(MATRIX, true, (0.6, -0.8))
        extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
        errors = extra.finder.detect.prediction_errors
        assert errors and max(errors) < (1.5 if true is MATRIX else 6.0)


def test_centring_reports_a_lost_nozzle():
    extra, _, _ = centring_setup(MATRIX, MATRIX, (0.6, -0.8), lose_after=1)
    with pytest.raises(CommandError, match="lost the nozzle after centring "
                                           "move 1"):
        extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())


def test_origin_and_offset_use_the_image_for_sub_step_accuracy():
    extra, toolhead, nozzle = centring_setup(MATRIX, MATRIX, (0.6, -0.8))
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    extra.cmd_KTAMV_SET_ORIGIN(FakeGcmd())
    assert extra.book.origin["position"] == pytest.approx(nozzle, abs=1e-9)
    # A "second tool" whose nozzle centres 0.1234, -0.0567 mm away.
    extra.finder.detect.nozzle_xy = (nozzle[0] + 0.1234, nozzle[1] - 0.0567)
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_GET_OFFSET(gcmd)
    assert extra.book.last_calculated_offset == pytest.approx([0.1234, -0.0567],
                                                         abs=1e-9)
    assert "X=0.1234 Y=-0.0567" in gcmd.info[-1]


# -- helper pipe protocol handling (no process, no Klipper) -------------------

class PipeReactor:
    """Just enough reactor for HelperProcess's reading side."""

    def __init__(self):
        self.fds = {}
        self.callbacks = []

    def monotonic(self):
        return 1000.0

    def register_fd(self, fd, callback):
        handle = type("Handle", (), {"fd": fd})()
        self.fds[fd] = callback
        return handle

    def unregister_fd(self, handle):
        self.fds.pop(handle.fd, None)

    def register_callback(self, callback):
        self.callbacks.append(callback)

    def register_timer(self, callback, waketime):
        self.callbacks.append(callback)

    def completion(self):
        return Completion()


class Completion:
    def __init__(self):
        self.result = None
        self.done = False

    def complete(self, result):
        self.result, self.done = result, True

    def wait(self, waketime=None):
        return self.result


def pipe_helper():
    """A HelperProcess whose stdout is a pipe the test writes to."""
    import os
    read_fd, write_fd = os.pipe()
    ktamv._set_nonblock(read_fd)
    helper = ktamv.HelperProcess(PipeReactor(), ["unused"])
    helper.proc = type("Proc", (), {"poll": lambda self: None, "pid": 1})()
    helper.proc.stdout = type("F", (), {"fileno": lambda self: read_fd})()
    helper.state = "starting"
    helper.ready_completion = Completion()
    return helper, read_fd, write_fd


def feed(helper, write_fd, read_fd, data):
    import os
    os.write(write_fd, data)
    helper._read_stdout(0.0)


def test_replies_are_matched_by_id_across_partial_reads(caplog):
    import logging
    import os
    caplog.set_level(logging.INFO)
    helper, read_fd, write_fd = pipe_helper()
    try:
        feed(helper, write_fd, read_fd, b'{"event": "ready", "protocol": 1}\n')
        assert helper.state == "ready"
        first, second = Completion(), Completion()
        helper.pending = {7: first, 8: second}
        feed(helper, write_fd, read_fd, b'{"id": 8, "result": {"x"')
        assert not second.done  # half a line is not a reply
        feed(helper, write_fd, read_fd,
             b': 1}}\nnot json at all\n{"id": 99, "result": {}}\n'
             b'{"id": 7, "error": {"code": "camera_timeout", '
             b'"message": "No frame."}}\n')
        assert second.result == {"id": 8, "result": {"x": 1}}
        assert first.result["error"]["code"] == "camera_timeout"
        assert helper.pending == {}
        assert "not a protocol message" in caplog.text
        assert "late or unknown reply id 99" in caplog.text
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_overlong_output_without_newline_is_dropped():
    import os
    helper, read_fd, write_fd = pipe_helper()
    old = ktamv.MAX_LINE_BYTES
    ktamv.MAX_LINE_BYTES = 1000
    try:
        feed(helper, write_fd, read_fd, b"x" * 1500)
        assert helper.buffers[read_fd] == b""
        done = Completion()
        helper.pending = {1: done}
        feed(helper, write_fd, read_fd, b'\n{"id": 1, "result": {}}\n')
        assert done.result == {"id": 1, "result": {}}
    finally:
        ktamv.MAX_LINE_BYTES = old
        os.close(read_fd)
        os.close(write_fd)


def test_wrong_protocol_version_is_refused():
    import os
    helper, read_fd, write_fd = pipe_helper()
    killed = []
    helper._kill = killed.append
    try:
        feed(helper, write_fd, read_fd, b'{"event": "ready", "protocol": 2}\n')
        assert helper.state == "starting"  # never became ready
        assert "protocol 2" in killed[0] and "needs 1" in killed[0]
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_helper_death_fails_pending_requests_with_a_sentence():
    import os
    helper, read_fd, write_fd = pipe_helper()
    helper.proc.stdin = helper.proc.stderr = type(
        "F", (), {"close": lambda self: None,
                  "fileno": lambda self: read_fd})()
    waiting = Completion()
    helper.pending = {3: waiting}
    os.close(write_fd)  # EOF: the helper is gone
    try:
        helper._read_stdout(0.0)
        assert helper.state == "exited"
        assert waiting.result["error"]["code"] == "helper_died"
        assert "stopped unexpectedly" in waiting.result["error"]["message"]
        assert helper.get_pid() is None
    finally:
        os.close(read_fd)


# -- calibration --------------------------------------------------------------

class FakeConfigfile:
    def __init__(self, settings=None):
        self.saved = {}
        self.settings = settings or {}

    def get_status(self, eventtime):
        return {"settings": self.settings}

    def set(self, section, option, value):
        self.saved[(section, option)] = value


def calibration_setup(missing=(), fit_error=None, broken=()):
    toolhead = FakeToolhead()
    extra, printer = make_ktamv({"backlash_approach": "0.5"}, toolhead)
    printer.objects["configfile"] = FakeConfigfile()
    camera = LinearCamera(toolhead, MATRIX, (100.0, 100.0))
    seen = []
    points = []     # distinct positions: a point is looked at once more
    hints_seen = []

    def detect(gcmd, frames=None, after_move=True, reference=None, hints=None,
               scale=True):
        here = tuple(toolhead.get_position()[:2])
        if not seen or seen[-1] != here:
            points.append(here)
        seen.append(here)
        hints_seen.append(hints)
        if len(points) - 1 in missing:
            error = gcmd.error("kTAMV: No nozzle found in 3 frames.")
            error.helper_code = "nozzle_not_found"
            raise error
        if len(seen) - 1 in broken:
            error = gcmd.error("kTAMV: The camera at http://x sent no frame.")
            error.helper_code = "camera_timeout"
            raise error
        return camera(gcmd)

    sent = {}

    def call(gcmd, method, params=None, timeout=0.):
        assert method == "fit_camera_model"
        sent["pairs"] = params["pairs"]
        if fit_error:
            raise gcmd.error(fit_error)
        return {"matrix": MATRIX, "offset": [0, 0], "mm_per_px": 0.01,
                "rotation_deg": 90.0, "mirrored": False, "rms_mm": 0.0001,
                "used": list(range(len(params["pairs"]))), "rejected": []}

    extra.finder.detect = detect
    extra.client.call = call
    extra.test_hints_seen = hints_seen
    return extra, printer, toolhead, seen, sent


def test_calibration_skips_points_without_a_nozzle_and_saves_the_model():
    extra, printer, toolhead, seen, sent = calibration_setup(missing=(3, 7))
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_CALIB_CAMERA(gcmd)
    # The start and 10 points on the circle; the two without a nozzle are
    # looked at once more with the start pixel allowed.
    assert len(seen) == 13
    assert len(set(seen)) == 11
    radii = [math.hypot(x - 100.0, y - 100.0) for x, y in sorted(set(seen))
             if (x, y) != (100.0, 100.0)]
    assert radii == pytest.approx([0.5] * 10, abs=0.0125)
    assert len(sent["pairs"]) == 9
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])
    assert "2 without a nozzle" in gcmd.info[-1]
    assert "SAVE_CONFIG" in gcmd.info[-1]
    saved = printer.objects["configfile"].saved[("ktamv", "camera_matrix")]
    assert [float(v) for v in saved.split(",")] == pytest.approx(
        [0.0, 0.01, 0.01, 0.0])
    assert printer.objects["configfile"].saved[("ktamv", "camera_frame_size")] \
        == "640, 480"
    assert extra.get_status(0.0)["is_calibrated"] is True
    assert extra.get_status(0.0)["camera_model"]["frame_size"] == [640, 480]


def test_a_frame_size_change_during_calibration_stops_it_unsaved():
    extra, printer, toolhead, seen, sent = calibration_setup()
    linear = extra.finder.detect
    calls = []

    def detect(gcmd, *args, **kwargs):
        calls.append(1)
        det = linear(gcmd, *args, **kwargs)
        if len(calls) > 4:      # the camera fell back to another mode
            det["frame_size"] = [320, 240]
        return det

    extra.finder.detect = detect
    with pytest.raises(CommandError, match=r"the camera changed its frame size "
                       r"during calibration \(640x480, then 320x240\)"):
        extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert printer.objects["configfile"].saved == {}
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])


def test_calibration_never_sends_the_old_scale():
    # A camera whose zoom or resolution changed is calibrated afresh: the
    # old model's scale would expect a bore of the wrong size.
    toolhead = FakeToolhead()
    extra, _ = make_ktamv({}, toolhead)
    extra.finder.model = ktamv.CameraModel(MATRIX, frame_size=[320, 240])
    assert extra.finder.bore_hints(FakeGcmd()) == {
        "nozzle_diameter": 0.4, "mm_per_px": pytest.approx(0.01),
        "calibrated_size": [320, 240]}
    assert extra.finder.bore_hints(FakeGcmd(), scale=False) == {"nozzle_diameter": 0.4}
    extra, _, _, _, _ = calibration_setup(missing=(3,))
    linear, scales = extra.finder.detect, []

    def detect(gcmd, *args, **kwargs):
        scales.append(kwargs.get("scale", True))
        return linear(gcmd, *args, **kwargs)

    extra.finder.detect = detect
    extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert len(scales) == 12 and not any(scales)


def test_calibration_points_keep_the_start_size_and_leave_the_start_pixel():
    # After the start point every detection must be the bore of the size
    # seen there, and never the start pixel itself (a static lens feature).
    extra, _, _, seen, sent = calibration_setup()
    extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert extra.test_hints_seen[0] is None
    start_uv = sent["pairs"][0]["uv"]
    for hints in extra.test_hints_seen[1:]:
        assert hints == {"expected_radius": 20.0, "exclude": [start_uv]}


def test_nozzle_diameter_and_scale_reach_the_helper():
    toolhead = FakeToolhead()
    extra, _ = make_ktamv({"nozzle_diameter": "0.6"}, toolhead)
    assert extra.finder.bore_hints(FakeGcmd()) == {"nozzle_diameter": 0.6}
    extra.finder.model = ktamv.CameraModel(MATRIX)
    assert extra.finder.bore_hints(FakeGcmd(NOZZLE_DIAMETER="0.8")) == {
        "nozzle_diameter": 0.8, "mm_per_px": pytest.approx(0.01)}


def test_the_active_extruder_names_its_nozzle_unless_ktamv_or_the_command_does():
    # FakeToolhead's active extruder is "extruder"; Klipper's configfile
    # status carries its parsed nozzle_diameter (printer.cfg is the truth).
    def hints(options, settings, **params):
        extra, printer = make_ktamv(options, FakeToolhead())
        printer.objects["configfile"] = FakeConfigfile(settings)
        return extra.finder.bore_hints(FakeGcmd(**params), scale=False)
    mine = {"extruder": {"nozzle_diameter": 0.6}, "extruder1": {"nozzle_diameter": 0.8}}
    assert hints({}, mine) == {"nozzle_diameter": 0.6}
    assert hints({"nozzle_diameter": "0.5"}, mine) == {"nozzle_diameter": 0.5}
    assert hints({}, mine, NOZZLE_DIAMETER="0.25") == {"nozzle_diameter": 0.25}
    # No extruder section, or a size kTAMV does not take: 0.4 mm.
    assert hints({}, {}) == {"nozzle_diameter": 0.4}
    assert hints({}, {"extruder": {"nozzle_diameter": 3.0}}) == {"nozzle_diameter": 0.4}


def test_calibration_refuses_a_bad_fit_and_keeps_the_old_model():
    extra, printer, toolhead, _, _ = calibration_setup(
        fit_error="kTAMV: The points are collinear; check the camera.")
    with pytest.raises(CommandError, match="collinear"):
        extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert extra.finder.model is None
    assert printer.objects["configfile"].saved == {}
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])


def test_calibration_without_a_nozzle_at_the_start_stops_at_once():
    extra, _, toolhead, seen, sent = calibration_setup(missing=(0,))
    with pytest.raises(CommandError, match="no nozzle at the start"):
        extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert len(seen) == 1 and not sent
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])


def test_helper_log_flood_is_capped(caplog):
    import logging
    import os
    caplog.set_level(logging.INFO)
    helper, read_fd, write_fd = pipe_helper()
    clock = [1000.0]
    helper.reactor.monotonic = lambda: clock[0]
    try:
        os.write(write_fd, b"".join(b"line %d\n" % i for i in range(250)))
        helper._read_stderr(0.0, read_fd)
        copied = [r for r in caplog.messages if r.startswith("ktamv helper:")]
        assert len(copied) == ktamv.MAX_LOG_LINES
        assert copied[0] == "ktamv helper: line 0"
        clock[0] += ktamv.LOG_WINDOW + 1
        os.write(write_fd, b"after the window\n")
        helper._read_stderr(0.0, read_fd)
        assert "50 more helper log lines were not copied" in caplog.text
        assert caplog.messages[-1] == "ktamv helper: after the window"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_calibration_stops_on_camera_trouble_instead_of_skipping():
    extra, printer, toolhead, seen, sent = calibration_setup(broken=(4,))
    with pytest.raises(CommandError, match="sent no frame"):
        extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert len(seen) == 5 and not sent
    assert extra.finder.model is None
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])


# -- an ambiguous calibration start: the first move tells the nozzle --------

DIRT = ((540.0, 110.0), 20.0)      # a lens feature the size of the bore


def test_rigid_choice_takes_the_one_that_moved_and_names_the_static_one():
    nozzle = ((337.0, 227.0), 19.7)
    moved, stayed = ktamv.rigid_choice(
        [DIRT, nozzle], [((540.2, 110.3), 20.1), ((387.0, 227.4), 19.6)])
    assert (moved, stayed) == ([1], [0])
    # The dirt has a counterpart of its size 200 px away (the moved nozzle),
    # but it also stayed: it is never the one that moved.
    assert ktamv.rigid_choice([DIRT], [DIRT, ((387.0, 227.4), 19.6)]) == \
        ([], [0])


@pytest.mark.parametrize("after, moved, stayed", [
    ([((150.0, 100.0), 23.9)], [0], []),    # radius within 20 %
    ([((150.0, 100.0), 24.1)], [], []),     # 20.5 % bigger: something else
    ([((150.0, 100.0), 15.9)], [], []),     # 20.5 % smaller
    ([((102.1, 100.0), 20.0)], [0], []),    # moved 2.1 px
    ([((101.5, 100.0), 20.0)], [], []),     # 1.5 px: neither moved nor still
    ([((100.9, 100.0), 20.0)], [], [0]),    # within 1 px: stayed put
    ([], [], []),                           # nothing round after the move
])
def test_rigid_choice_limits(after, moved, stayed):
    assert ktamv.rigid_choice([((100.0, 100.0), 20.0)], after) == \
        (moved, stayed)


def test_rigid_choice_needs_the_shift_a_usable_camera_shows():
    before, after = [((100.0, 100.0), 20.0)], [((102.4, 100.0), 20.0)]
    assert ktamv.rigid_choice(before, after, min_shift=2.5) == ([], [])
    assert ktamv.rigid_choice(before, after, min_shift=2.0) == ([0], [])


def test_rigid_choice_reports_every_mover_and_every_static_thing():
    # Two nozzles in view move alike; a frozen picture moves nothing.
    twins = [DIRT, ((300.0, 200.0), 20.0), ((450.0, 200.0), 20.0)]
    shifted = [DIRT] + [((u + 50.0, v), r) for (u, v), r in twins[1:]]
    assert ktamv.rigid_choice(twins, shifted) == ([1, 2], [0])
    assert ktamv.rigid_choice(twins, twins) == ([], [0, 1, 2])


def ambiguous_start_setup(mode="moved"):
    """Calibration whose first two looks (the start, then the first point)
    are refused as ambiguous: the nozzle and DIRT are in view (``twins``: a
    second nozzle 150 px away too; ``frozen``: the first point's picture is
    the start's)."""
    extra, printer, toolhead, seen, sent = calibration_setup()
    linear = extra.finder.detect
    calls = []

    def detect(gcmd, frames=None, after_move=True, reference=None, hints=None,
               scale=True):
        calls.append((reference, hints))
        det = linear(gcmd, frames, after_move, reference, hints)
        if len(calls) > 2:
            return det
        uv = calls[0][2] if mode == "frozen" and len(calls) == 2 else det["uv"]
        calls[-1] += (uv,)
        things = [DIRT, (uv, 20.0)]
        if mode == "twins":
            things.append(((uv[0] + 150.0, uv[1]), 20.0))
        error = gcmd.error("kTAMV: Not sure which circle is the nozzle.")
        error.helper_code = "nozzle_ambiguous"
        error.helper_details = {"candidates": [
            {"center": list(c), "radius": r, "rings": [r]} for c, r in things]}
        raise error

    extra.finder.detect = detect
    return extra, toolhead, sent, calls


def test_an_ambiguous_start_is_resolved_by_the_first_planned_move():
    extra, toolhead, sent, calls = ambiguous_start_setup()
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_CALIB_CAMERA(gcmd)
    start_uv = [319.5, 239.5]
    # The start pair is the nozzle's pixel, not the dirt's; 11 pairs.
    assert sent["pairs"][0] == {"xy": [100.0, 100.0], "uv": start_uv}
    assert len(sent["pairs"]) == 11
    # The first point is looked at twice (without hints, then as usual);
    # every later look skips the start pixel and the dirt.
    assert calls[1][1] is None and len(calls) == 12
    for reference, hints in calls[2:]:
        assert hints == {"expected_radius": 20.0,
                         "exclude": [start_uv, [540.0, 110.0]]}
        assert reference is None    # no latency measurement that knows no dirt
    text = "\n".join(gcmd.info)
    assert "the one at u=319.5 v=239.5 (r=20.0 px) moved with the toolhead" \
        in text
    assert "One stayed put at u=540.0 v=110.0" in text
    assert extra.finder.model is not None
    # Later detections (centring, origins, offsets) skip the dirt too.
    assert [list(p) for p in extra.finder.static_pixels] == [[540.0, 110.0]]
    # The same moves as a calibration with an unambiguous start: the plan.
    plain, _, plain_toolhead, _, _ = calibration_setup()
    plain.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert toolhead.moves == plain_toolhead.moves


@pytest.mark.parametrize("mode, words", [
    ("frozen", "none of the 2 round things at the start (u=540 v=110 r=20 "
               "px, u=320 v=240 r=20 px) moved with the toolhead on the first "
               "calibration move: is the camera stream frozen?"),
    ("twins", "2 round things of the same size moved with the toolhead on "
              "the first calibration move (u=320 v=240 r=20 px, u=470 v=240 "
              "r=20 px), so kTAMV cannot tell which is the nozzle"),
])
def test_an_ambiguous_start_without_one_mover_fails_back_at_the_start(
        mode, words):
    extra, toolhead, sent, calls = ambiguous_start_setup(mode)
    with pytest.raises(CommandError) as info:
        extra.cmd_KTAMV_CALIB_CAMERA(FakeGcmd())
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    assert len(calls) == 2 and not sent and extra.finder.model is None
    # Out to the first point only (each move arrives moving +X and +Y by
    # the backlash approach), then back.
    assert [m[0] for m in toolhead.moves] == [
        (99.5, 99.5), (100.0, 100.0), (100.0, 99.5), (100.5, 100.0),
        (99.5, 99.5), (100.0, 100.0)]
    assert toolhead.get_position()[:2] == pytest.approx([100.0, 100.0])


def test_a_start_point_the_fit_rejects_is_named():
    # The fit is the rigidity check of all points: a start it rejects was
    # not the thing that moved with the others.
    extra, _, _, _, sent = calibration_setup()
    fit = extra.client.call

    def call(gcmd, method, params=None, timeout=0.):
        res = fit(gcmd, method, params, timeout)
        res.update(used=list(range(1, len(params["pairs"]))), rejected=[0])
        return res

    extra.client.call = call
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_CALIB_CAMERA(gcmd)
    assert any(line.startswith("kTAMV: the start point does not fit the "
                               "others") for line in gcmd.info)
    assert "10 points used, 1 rejected" in gcmd.info[-1]
    quiet = FakeGcmd()
    calibration_setup()[0].cmd_KTAMV_CALIB_CAMERA(quiet)
    assert not any("does not fit" in line for line in quiet.info)


def test_helper_error_details_reach_the_command_error():
    extra, _ = make_ktamv()
    details = {"candidates": [{"center": [1.0, 2.0], "radius": 3.0}]}

    def request(method, params=None, timeout=10.):
        raise ktamv.HelperFailure("nozzle_ambiguous", "Not sure.", details)

    extra.helper.ensure_ready = lambda: None
    extra.helper.request = request
    extra.client.configure_error = None
    with pytest.raises(CommandError) as info:
        extra.client.call(FakeGcmd(), "detect", {})
    assert info.value.helper_code == "nozzle_ambiguous"
    assert info.value.helper_details == details


# -- compatibility: kinematics, tool names, shutdown, Python versions --------

def motion_with(steppers, backlash=0.0):
    printer = FakePrinter(FakeToolhead(steppers=steppers))
    motion = ktamv.KtamvMotion(printer, 30.0, backlash, 5.0)
    motion.handle_connect()
    motion.begin()
    return motion, printer.objects["toolhead"], printer


def steps_of(stepper, x, y, z=5.0):
    """How many whole steps from its step 0 a stepper is at (x, y, z)."""
    pos = stepper.calc_position_from_coord([x, y, z])
    return (pos - stepper.mcu_to_commanded_position(0)) / stepper.step_dist


def assert_whole_steps(steppers, x, y):
    for stepper in steppers:
        if stepper.j[:2] == (0, 0):
            continue  # a parked carriage keeps its place
        n = steps_of(stepper, x, y)
        assert n == pytest.approx(round(n), abs=1e-6), stepper.name


@pytest.mark.parametrize("name, steppers", [
    # Step grids not anchored at 0 (position_endstop off the grid).
    ("cartesian", [FakeStepper(1, 0, 0, 0.0125, 0.0041, "stepper_x"),
                   FakeStepper(0, 1, 0, 0.01, -0.0033, "stepper_y")]),
    ("corexy", [FakeStepper(1, 1, 0, 0.0125, 0.003, "stepper_a"),
                FakeStepper(1, -1, 0, 0.0125, -0.005, "stepper_b")]),
    # hybrid-corexy: the X motor drives x+y, the Y motor y alone.
    ("hybrid_corexy", [FakeStepper(1, 1, 0, 0.0125, 0.001, "stepper_x"),
                       FakeStepper(0, 1, 0, 0.00625, 0.002, "stepper_y")]),
    # IDEX: the parked carriage does not move with X (its kinematics hold
    # it), and its grid does not matter.
    ("idex", [FakeStepper(1, 0, 0, 0.0125, 0.0, "stepper_x"),
              FakeStepper(0, 0, 0, 0.0125, 0.0071, "dual_carriage"),
              FakeStepper(0, 1, 0, 0.0125, 0.0, "stepper_y")]),
    # A gear ratio gives an odd step distance; Klipper reports it.
    ("geared", [FakeStepper(1, 0, 0, 40. / 200 / 16 * 0.6, 0.0, "x"),
                FakeStepper(0, 1, 0, 0.0125, 0.0, "y")]),
])
def test_moves_land_on_whole_steps_of_every_motor(name, steppers):
    motion, toolhead, _ = motion_with(steppers + [
        FakeStepper(0, 0, 1, 0.0025, 0.0, "stepper_z")])
    for target in [(100.1234, 99.9871), (100.0057, 100.3333),
                   (99.5, 100.71)]:
        motion.move_to(*target)
        x, y = toolhead.get_position()[:2]
        assert_whole_steps(steppers, x, y)
        biggest = max(s.step_dist for s in steppers)
        assert math.hypot(x - target[0], y - target[1]) <= biggest
        # Moving there again would not turn any motor: centring stops.
        assert motion.cannot_improve(x, y)
        assert motion.cannot_improve(x + 0.2 * biggest, y)
        assert not motion.cannot_improve(x + 3 * biggest, y)


@pytest.mark.parametrize("name, steppers", [
    ("delta", [DeltaTower(-100, -60), DeltaTower(100, -60),
               DeltaTower(0, 115)]),
    # Two Y motors whose step grids disagree cannot both hold whole steps.
    ("two_y_motors_off_grid", [FakeStepper(1, 0, 0, 0.0125, 0.0, "x"),
                               FakeStepper(0, 1, 0, 0.0125, 0.0, "y"),
                               FakeStepper(0, 1, 0, 0.0125, 0.004, "y1")]),
])
def test_kinematics_that_cannot_snap_move_exactly_to_the_target(name,
                                                                steppers):
    motion, toolhead, _ = motion_with(steppers)
    motion.move_to(100.1234, 99.9871)
    assert toolhead.get_position()[:2] == [100.1234, 99.9871]
    assert motion.snap_xy(100.1234, 99.9871)[2] is False


def test_a_stepper_without_the_grid_api_disables_snapping():
    class OldStepper(FakeStepper):
        mcu_to_commanded_position = property()  # AttributeError on access

    motion, toolhead, _ = motion_with([OldStepper(1, 0, 0, 0.0125),
                                       OldStepper(0, 1, 0, 0.0125)])
    motion.move_to(100.1234, 99.9871)
    assert toolhead.get_position()[:2] == [100.1234, 99.9871]
    # Without a grid, a correction under half a step is still not worth a
    # move (centring ends there and the image gives the rest).
    assert motion.cannot_improve(100.1234 + 0.001, 99.9871)


def test_no_move_after_a_shutdown_during_the_command():
    motion, toolhead, printer = motion_with(corexy_steppers())
    printer.shutdown = True
    with pytest.raises(CommandError, match="shut down"):
        motion.move_to(100.5, 100.5)
    assert toolhead.moves == []


def test_a_shutdown_while_the_helper_works_fails_the_command():
    extra, printer = make_ktamv()

    class Helper:
        state = "ready"

        def ensure_ready(self):
            pass

        def request(self, method, params, timeout):
            printer.shutdown = True  # an M112 arrived meanwhile
            return {"center": [1, 2]}

    extra.client.helper = Helper()
    with pytest.raises(CommandError, match="shut down"):
        extra.client.call(FakeGcmd(), "detect", {})


class StatusObject:
    def __init__(self, status):
        self.status = status

    def get_status(self, eventtime):
        return dict(self.status)


def test_toolchanger_names_the_tool():
    extra, printer = make_ktamv()
    # klipper-toolchanger: 'tool' is the [tool T1] section name.
    printer.objects["toolchanger"] = StatusObject(
        {"status": "ready", "tool": "tool T1", "tool_number": 1})
    assert extra.tools.current() == "T1"
    printer.objects["toolchanger"] = StatusObject(
        {"status": "ready", "tool": None, "tool_number": -1})
    with pytest.raises(CommandError, match="no selected tool"):
        extra.tools.current()


@pytest.mark.parametrize("status, tool", [
    # Klipper 2023
    ({"carriage_0": "INACTIVE", "carriage_1": "PRIMARY"}, "carriage_1"),
    # Klipper 2025+: named carriages, plus carriage_N for two of them
    ({"carriages": {"x": "PRIMARY", "dc": "INACTIVE"},
      "carriage_0": "PRIMARY", "carriage_1": "INACTIVE"}, "carriage_0"),
    ({"carriages": {"x": "INACTIVE", "x2": "PRIMARY", "y": "PRIMARY",
                    "y2": "INACTIVE"}}, "x2+y"),
])
def test_idex_names_the_primary_carriage(status, tool):
    extra, printer = make_ktamv()
    printer.objects["dual_carriage"] = StatusObject(status)
    assert extra.tools.current() == tool


def test_idex_copy_mode_is_refused():
    extra, printer = make_ktamv()
    printer.objects["dual_carriage"] = StatusObject(
        {"carriage_0": "PRIMARY", "carriage_1": "COPY"})
    with pytest.raises(CommandError, match="COPY mode"):
        extra.tools.current()


def test_tool_status_option_overrides_the_defaults():
    extra, printer = make_ktamv({"tool_status": "gcode_macro _T.current"})
    printer.objects["toolchanger"] = StatusObject({"tool": "tool T1"})
    printer.objects["gcode_macro _T"] = StatusObject({"current": 3})
    assert extra.tools.current() == "3"
    extra, printer = make_ktamv()
    assert extra.tools.current() == "extruder"


def test_tool_gcode_offset_adds_the_reference_tools_own_offset():
    extra, toolhead, nozzle = centring_setup(MATRIX, MATRIX, (0.6, -0.8))
    # T0 is printed with SET_GCODE_OFFSET X=0.2 Y=-0.1 (toolchanger or a
    # macro): T1's offset must be relative to that.
    gcode_move = StatusObject({"homing_origin": [0.2, -0.1, 0.05, 0.0]})
    extra.printer.objects["gcode_move"] = gcode_move
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    extra.cmd_KTAMV_SET_ORIGIN(FakeGcmd())
    # T1's nozzle sits 0.3 mm further +X: its toolhead must stop 0.3 mm
    # further -X to put it where T0's was, so its raw offset is -0.3.
    extra.finder.detect.nozzle_xy = (nozzle[0] + 0.3, nozzle[1])
    gcode_move.status["homing_origin"] = [0.0, 0.0, 0.0, 0.0]
    extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    gcmd = FakeGcmd()
    extra.cmd_KTAMV_GET_OFFSET(gcmd)
    assert extra.book.last_calculated_offset == pytest.approx([0.3, 0.0],
                                                         abs=1e-9)
    assert extra.book.last_tool_gcode_offset == pytest.approx([0.5, -0.1],
                                                         abs=1e-9)
    assert "X=0.5000 Y=-0.1000" in gcmd.info[-1]
    assert "gcode_x_offset: 0.5000" in gcmd.info[-1]
    status = extra.get_status(0.)
    assert status["last_tool_gcode_offset"] == pytest.approx([0.5, -0.1])


@pytest.mark.parametrize("command, params, words", [
    ("cmd_KTAMV_FIND_NOZZLE_CENTER", {"TOLERANCE": 0}, "TOLERANCE must be "
     "above 0.0"),
    ("cmd_KTAMV_FIND_NOZZLE_CENTER", {"MAX_MOVES": 51}, "MAX_MOVES must have"
     " maximum of 50"),
    ("cmd_KTAMV_CALIB_CAMERA", {"POINTS": 3}, "POINTS must have minimum of 4"),
    ("cmd_KTAMV_CALIB_CAMERA", {"RADIUS": 11}, "RADIUS must have maximum of"
     " 10"),
    ("cmd_KTAMV_SIMPLE_NOZZLE_POSITION", {"FRAMES": 0}, "FRAMES must have "
     "minimum of 1"),
    ("cmd_KTAMV_OFFSET_STATISTICS", {"RESET": 2}, "RESET must have maximum "
     "of 1"),
])
def test_gcode_parameters_are_bounded_before_anything_happens(command,
                                                              params, words):
    extra, _ = make_ktamv({"camera_matrix": "0, 0.01, 0.01, 0"})
    extra.book.origin = {"tool": "extruder", "position": [0., 0.]}
    calls = []
    extra.client.call = lambda *args, **kwargs: calls.append(args)
    with pytest.raises(CommandError, match=words):
        getattr(extra, command)(FakeGcmd(**params))
    assert calls == [] and extra.motion.toolhead.moves == []


def test_ktamv_py_parses_as_python_3_7_and_uses_only_the_stdlib():
    import ast
    source = (REPO / "ktamv.py").read_text()
    tree = ast.parse(source, feature_version=(3, 7))
    for node in ast.walk(tree):
        # Not caught by feature_version: newer library calls.
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("removeprefix", "removesuffix",
                                     "is_relative_to"), node.attr
        # f"{x=}" (3.8+)
        if isinstance(node, ast.FormattedValue):
            pytest.fail("f-strings with = need Python 3.8")
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no imports from klippy modules"
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names), \
        imported - set(sys.stdlib_module_names)


def test_no_tool_selected_only_refuses_measurements():
    extra, printer = make_ktamv()
    printer.objects["toolchanger"] = StatusObject(
        {"status": "uninitialized", "tool": None, "tool_number": -1})
    # Detections and helper requests still carry a label...
    assert extra.tools.current(strict=False) == "unknown"
    assert extra.client.machine_state()["tool"] == "unknown"
    # ...but an origin is refused before anything is detected.
    extra.finder.model = ktamv.CameraModel(MATRIX)
    extra.finder.detect = lambda *a, **k: pytest.fail("detected anyway")
    with pytest.raises(CommandError, match="no selected tool"):
        extra.cmd_KTAMV_SET_ORIGIN(FakeGcmd())
    assert extra.book.origin is None


def test_homing_lost_mid_command_refuses_the_next_move():
    motion, toolhead, _ = motion_with(corexy_steppers())
    motion.move_to(100.5, 100.5)
    toolhead.homed = "z"  # e.g. motors switched off meanwhile
    count = len(toolhead.moves)
    with pytest.raises(CommandError, match="G28"):
        motion.move_to(100.2, 100.2)
    assert len(toolhead.moves) == count


# -- helper lifecycle (issue 9) ------------------------------------------------

def test_a_crash_loop_is_sticky_beyond_the_restart_window():
    reactor = PipeReactor()
    clock = [1000.0]
    reactor.monotonic = lambda: clock[0]
    helper = ktamv.HelperProcess(reactor, ["/nonexistent/python", "-m",
                                           "ktamv_helper"])
    helper.start_times = [990.0, 995.0, 999.0]
    for later in (0.0, ktamv.RESTART_WINDOW * 2):
        clock[0] += later
        with pytest.raises(ktamv.HelperFailure, match="stopped restarting"):
            helper.start()
        assert helper.state == "failed"
    helper.reset()
    with pytest.raises(ktamv.HelperFailure, match="does not exist"):
        helper.start()  # tried again: the real cause shows


def test_stop_holds_klippy_at_most_half_a_second_and_the_kill_is_reaped():
    import time
    fake = str(REPO / "test" / "fake_helper.py")
    helper = ktamv.HelperProcess(PipeReactor(), [sys.executable, fake,
                                                 "--stubborn"])
    helper.start()
    proc = helper.proc
    time.sleep(0.5)  # it runs, ignoring SIGTERM and shutdown
    started = time.monotonic()
    helper.stop()
    assert time.monotonic() - started <= 0.55
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:
        ktamv._reap_orphans()
        time.sleep(0.05)
    assert proc.returncode == -9
    ktamv._reap_orphans()
    assert proc not in ktamv._orphans


# -- unexpected exceptions (issue 9) --------------------------------------------

def test_a_bug_inside_a_command_reaches_klipper_which_shuts_down():
    extra, printer = make_ktamv({"camera_matrix": "0, 0.01, 0.01, 0"})
    handler = printer.objects["gcode"].commands["KTAMV_SET_ORIGIN"]
    assert handler == extra.cmd_KTAMV_SET_ORIGIN  # no wrapper

    def buggy(gcmd):
        return {}["no such key"]
    extra.finder.corrected_position = buggy
    # Not turned into a command error: Klippy's dispatcher sees a non-
    # command exception and shuts the printer down ("Internal error").
    with pytest.raises(KeyError):
        handler(FakeGcmd())


@pytest.mark.parametrize("reply", [
    {"center": "middle", "frame_size": [640, 480]},
    {"center": [1.0, 2.0]},
    {"center": [1.0, None], "frame_size": [640, 480]},
])
def test_a_malformed_helper_reply_is_a_sentence_not_a_shutdown(reply):
    extra, printer = make_ktamv()
    extra.client.call = lambda *args, **kwargs: dict(reply)
    with pytest.raises(CommandError, match="the vision helper sent a "
                       "detection this ktamv.py cannot read"):
        printer.objects["gcode"].commands["KTAMV_SIMPLE_NOZZLE_POSITION"](
            FakeGcmd())


@pytest.mark.parametrize("summed, words", [
    (8, "(radius 10.0 px, score 0.90, 3 frames, each a sum of 8 dim frames), "),
    (1, "(radius 10.0 px, score 0.90, 3 frames), "),
    (None, "(radius 10.0 px, score 0.90, 3 frames), "),   # an older helper
])
def test_the_position_report_says_when_dim_frames_were_summed(summed, words):
    extra, printer = make_ktamv()
    reply = {"center": [330.0, 250.0], "frame_size": [640, 480], "radius": 10.0,
             "score": 0.9, "frames_used": 3}
    if summed is not None:
        reply["frames_summed"] = summed
    extra.client.call = lambda *args, **kwargs: dict(reply)
    gcmd = FakeGcmd()
    printer.objects["gcode"].commands["KTAMV_SIMPLE_NOZZLE_POSITION"](gcmd)
    assert words in gcmd.info[-1]
    assert extra.get_status(0.0)["last_detection"]["summed"] == (summed or 1)


def test_the_limits_both_halves_share_come_from_one_file():
    import ast
    from ktamv_helper import limits
    from ktamv_helper import camera_model, service
    assert ktamv._LIMITS.__file__ == limits.__file__  # read, not copied
    assert ktamv.MIN_MM_PER_PX == limits.MIN_MM_PER_PX
    assert ktamv.MAX_MM_PER_PX == limits.MAX_MM_PER_PX
    assert camera_model.MAX_MM_PER_PX is limits.MAX_MM_PER_PX
    assert ktamv.MAX_MOVES == service.MAX_MOVES == limits.MAX_MOVES
    # camera_timeout's config bounds stay literal (the docs test reads
    # them), so they are checked against the shared ones here.
    tree = ast.parse((REPO / "ktamv.py").read_text())
    bounds = next(dict((k.arg, k.value.value) for k in node.keywords)
                  for node in ast.walk(tree) if isinstance(node, ast.Call)
                  and node.args and getattr(node.args[0], "value", None)
                  == "camera_timeout")
    assert bounds == {"minval": limits.MIN_CAMERA_TIMEOUT,
                      "maxval": limits.MAX_CAMERA_TIMEOUT}


@pytest.mark.parametrize("url, simulated", [("http://cam/stream", False),
                                            ("sim://?seed=1", True)])
def test_only_the_sim_camera_hears_the_machine_state(url, simulated):
    extra, printer = make_ktamv({"nozzle_cam_url": url})
    sent = []

    class Helper:
        def ensure_ready(self):
            pass

        def request(self, method, params, timeout):
            sent.append(params)
            return {"camera_url": url, "preview": None}

    extra.client.helper = Helper()
    for _ in range(2 * ktamv.MAX_MOVES):
        extra.motion.move_to(100.5, 100.5)
        extra.motion.move_to(100.0, 100.0)
    extra.client.call(FakeGcmd(), "version", {})
    assert ("machine" in sent[0]) is simulated
    assert len(extra.motion.moves) <= ktamv.MAX_MOVES

# -- search ------------------------------------------------------------------

def test_spiral_covers_each_ring_once_and_nothing_beyond():
    cells = ktamv.spiral_cells(3)
    assert len(cells) == len(set(cells)) == 7 * 7 - 1
    assert (0, 0) not in cells
    assert max(max(abs(i), abs(j)) for i, j in cells) == 3
    # Neighbouring cells of the walk are adjacent (a spiral, no jumps).
    assert all(max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1
               for a, b in zip(cells, cells[1:]))


def test_search_pitch_is_70_percent_of_the_view_and_safe_when_rotated():
    px, py, how = ktamv.search_pitch(None, None)
    assert px == py == pytest.approx(1.4) and "guessed 2.0 mm" in how
    model = ktamv.CameraModel([[0.01, 0.], [0., 0.01]])
    px, py, _ = ktamv.search_pitch(model, (640, 480))
    assert (px, py) == (pytest.approx(4.48), pytest.approx(3.36))
    # Rotated by 30 degrees: every corner of a pitch cell, mapped back into
    # the image, stays inside it (so no cell is left unseen).
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    model = ktamv.CameraModel([[0.01 * c, -0.01 * s], [0.01 * s, 0.01 * c]])
    px, py, _ = ktamv.search_pitch(model, (640, 480))
    assert px < 4.48 and py < 3.36
    (a, b), (d, e) = model.matrix
    det = a * e - b * d
    for sx in (-1, 1):
        for sy in (-1, 1):
            x, y = sx * px / 2, sy * py / 2
            du, dv = (e * x - b * y) / det, (-d * x + a * y) / det
            assert abs(du) <= 0.7 * 320 + 1e-6 and abs(dv) <= 0.7 * 240 + 1e-6


def test_detections_skip_static_pixels_unless_the_nozzle_sits_on_one():
    toolhead = FakeToolhead()
    extra, _ = make_ktamv({}, toolhead)
    extra.finder.static_pixels = [(540.0, 110.0)]
    sent = []
    on_the_dirt = []

    def call(gcmd, method, params=None, timeout=0.):
        sent.append(dict(params))
        if on_the_dirt and "exclude" in params:
            error = gcmd.error("kTAMV: No nozzle found in 3 frames.")
            error.helper_code = "nozzle_not_found"
            raise error
        return {"center": [320.0, 240.0], "radius": 20.0, "score": 0.9,
                "frame_size": [640, 480]}

    extra.client.call = call
    extra.finder.detect(FakeGcmd(), after_move=False)
    assert sent[-1]["exclude"] == [[540.0, 110.0]]
    # Hints of their own (calibration points) replace the remembered ones.
    extra.finder.detect(FakeGcmd(), after_move=False, hints={"exclude": []})
    assert sent[-1]["exclude"] == []
    # Centred right where the dirt was seen: excluded, then looked at again.
    on_the_dirt.append(True)
    sent.clear()
    det = extra.finder.detect(FakeGcmd(), after_move=False)
    assert det["uv"] == [320.0, 240.0]
    assert len(sent) == 2 and "exclude" in sent[0] and "exclude" not in sent[1]
    # A caller's own exclusions (a calibration point's start pixel) are not
    # dropped behind its back: the caller decides about a second look.
    sent.clear()
    with pytest.raises(CommandError, match="No nozzle found"):
        extra.finder.detect(FakeGcmd(), after_move=False,
                            hints={"exclude": [[1.0, 2.0]]})
    assert len(sent) == 1
    # A new camera or model: the dirt's pixels mean nothing any more.
    extra.finder.forget()
    assert extra.finder.static_pixels == []


@pytest.mark.parametrize("movers, words", [
    (2, "2 round things look like the bore (u=100 v=100 r=20 px, u=400 v=300 "
        "r=20 px) and 2 of them moved with a 0.400 mm probe move"),
    (0, "and 0 of them moved with a 0.400 mm probe move as the camera model "
        "says the nozzle must"),
])
def test_a_probe_move_that_does_not_single_out_one_bore_refuses(movers, words):
    extra, toolhead, _ = centring_setup(MATRIX, MATRIX, (0.6, -0.8))
    looks = []

    def detect(gcmd, frames=None, after_move=True, reference=None, hints=None,
               scale=True):
        looks.append(hints)
        if hints is None:
            error = gcmd.error("kTAMV: Not sure which circle is the nozzle.")
            error.helper_code = "nozzle_ambiguous"
            error.helper_details = {"candidates": [
                {"center": [100.0, 100.0], "radius": 20.0},
                {"center": [400.0, 300.0], "radius": 20.0}]}
            raise error
        if len(looks) - 1 > movers:
            error = gcmd.error("kTAMV: The nozzle is not where the model says.")
            error.helper_code = "nozzle_not_where_expected"
            raise error
        return {"uv": hints["near"][:2], "radius": 20.0, "frame_size": [640, 480],
                "position": toolhead.get_position()[:2]}

    extra.finder.detect = detect
    with pytest.raises(CommandError) as info:
        extra.cmd_KTAMV_FIND_NOZZLE_CENTER(FakeGcmd())
    assert words in str(info.value) and "\n" not in str(info.value)
    # The probe shifts the picture by twice the bores' radius (40 px, 0.4 mm
    # here), and every look after it expects each bore 40 px on.
    assert [h["near"][:2] for h in looks[1:]] == [
        pytest.approx([100.0, 140.0]), pytest.approx([400.0, 340.0])]
    assert looks[1]["near"][2] == pytest.approx(8.0)
    # One probe move (through its backlash approach), no centring move.
    assert toolhead.get_position()[:2] == pytest.approx([100.4, 100.0])


@pytest.mark.parametrize("radius, edge_width, noted", [
    (2.27, 1.25, True),     # ktamv-doc-2's endoscope: sigma 0.93 px
    (4.0, 2.25, True),      # a 4 px bore at sigma 1.5 (0.12 px off)
    (4.0, 1.5, False),      # ... at sigma 1 (0.01 px off)
    (10.0, 2.5, False),     # a 0.4 mm bore at 0.02 mm/px, sigma 1.9
    (3.0, 0.0, False),      # edge width not measured
])
def test_centring_says_when_the_bore_is_small_and_soft(radius, edge_width, noted):
    note = ktamv.soft_bore_note({'radius': radius, 'edge_width': edge_width})
    assert bool(note) == noted
    if noted:
        assert "radius %.1f px" % radius in note and "8 px or more" in note
