"""The ``sim://`` camera: a simulated upward-looking nozzle camera.

It renders what a real camera would see of a real printer: the nozzle of the
active tool at the pixel implied by the camera model and the *physical*
nozzle position, which differs from the commanded toolhead position by the
tool's offset, the microstep quantisation and the backlash of each axis (see
:mod:`ktamv_helper.simulation.machine`). The extra tells the camera the
commanded position and the active tool with every request
(``set_machine_state``).

Frames tick at ``fps`` on the ``time.monotonic()`` clock (tick ``k`` is at
``k / fps``). A frame shows the machine as it was ``latency`` seconds before
its tick, so frames taken too soon after a move still show the old position,
exactly like a real camera stream. ``get_frame(not_before)`` returns the
newest tick that already happened if it is not older than ``not_before``,
otherwise it waits for the first tick at or after ``not_before``.

URL keys (``sim://?key=value&...``; all optional):

=============  =========  ====================================================
key            default    meaning
=============  =========  ====================================================
seed           1          seeds tool offsets, nozzle looks and sensor noise
width, height  640, 480   frame size, px
fps            30         frame rate
mm_per_px      0.01       scale at the nozzle plane
rotation       0          direction of the image's +u axis in machine XY, deg
mirror         1          1: view from below (``mirrored: true`` in a fit)
camera_x/_y    0, 0       machine XY seen at the image centre (tool 0 centred)
tools          4          number of tools
offset_range   0.5        tools 1.. are offset from tool 0 by up to this, mm
backlash       0          play of each of X and Y, mm
step           0.0125     microstep, mm (0 = continuous)
kinematics     cartesian  ``corexy``: the microsteps are on A = X+Y, B = X-Y
latency        0.08       age of what a frame shows, s
nozzle         0.4        bore diameter, mm
nozzles        (none)     per-tool bore diameters, mm, comma-separated
                          (``0.4,0.6,0.8``); tools beyond the list: ``nozzle``
looks          random     ``ring_light``: brass under a ring light with the
                          confounders (clipped face, dark cone, coloured
                          LEDs, vignetting, a lens smudge); ``mixed``: odd
                          tools ring-light, even ones random
exposures      (per tool) per-tool exposure, comma-separated (``1,2.5,0.3``:
                          x2.5 clips the tip face and blooms it, x0.3 is a
                          dim picture); tools beyond the list: their look's
                          own (random looks 0.45-1.5, ring-light 1.05-1.5)
blurs          (per tool) per-tool defocus blur sigma, px, comma-separated
                          (tools of different lengths are not all in
                          focus); tools beyond the list: ``blur``, else
                          their look's own
cone_offsets   (per tool) per-tool centre of the turned outside (tip face's
                          outer edge, cone, hex) from the bore's, in bore
                          radii, ``dx:dy`` pairs comma-separated
                          (``0.5:0,-0.5:0``); tools beyond the list: their
                          look's own (ring-light: 0.1-0.35 in a random
                          direction; random looks: none)
light          (per look) B,G,R gains of the camera's LEDs (``1,0.12,0``: a
                          deep-blue LED, which leaves luma a fifth of the
                          range); default: each look's own
noise          (per tool) sensor noise sigma, grey levels
blur           (per tool) defocus blur sigma, px
dirt           (per tool) 0..1 burnt patch on the cone
glints         (per tool) number of specular spots
jpeg           (per tool) JPEG quality 1..100, 0 = none
record         (none)     folder: every frame delivered is saved there as a
                          JPEG, with ``frames.jsonl`` describing each one
disc           (none)     ``u,v,r``: a static dark disc of radius ``r`` px in
                          a bright ring (to ``2.5 r``) at pixel ``(u, v)``,
                          drawn over every frame: a ring light's reflection
                          in the cover glass or a hole in the housing lit
                          from the side; it never moves with the nozzle and
                          looks like a bore to the detector
=============  =========  ====================================================

Each tool gets its own look (body colour, lighting, blemishes, exposure) drawn
from the seed, so tools look different, as real ones do.
"""

import json
import logging
import math
import os
import threading
import time
import urllib.parse

import numpy as np

from ktamv_helper.cameras.base import CameraSource, Frame
from ktamv_helper.errors import HelperError
from ktamv_helper.simulation import machine as sim_machine

# key: (parser, default, minimum, maximum)
_KEYS = {
    "seed": (int, 1, 0, 2**31 - 1),
    "width": (int, 640, 32, 4096),
    "height": (int, 480, 32, 4096),
    "fps": (float, 30.0, 0.5, 240.0),
    "mm_per_px": (float, 0.01, 0.0005, 0.5),
    "rotation": (float, 0.0, -360.0, 360.0),
    "mirror": (int, 1, 0, 1),
    "camera_x": (float, 0.0, -10000.0, 10000.0),
    "camera_y": (float, 0.0, -10000.0, 10000.0),
    "tools": (int, 4, 1, 64),
    "offset_range": (float, 0.5, 0.0, 50.0),
    "backlash": (float, 0.0, 0.0, 5.0),
    "step": (float, 0.0125, 0.0, 1.0),
    "kinematics": (str, "cartesian", None, None),
    "latency": (float, 0.08, 0.0, 5.0),
    "nozzle": (float, 0.4, 0.05, 3.0),
    "noise": (float, None, 0.0, 100.0),
    "blur": (float, None, 0.0, 20.0),
    "dirt": (float, None, 0.0, 1.0),
    "glints": (int, None, 0, 50),
    "jpeg": (int, None, 0, 100),
    "record": (str, None, None, None),
    "looks": (str, "random", None, None),
    "nozzles": (str, "", None, None),
    "exposures": (str, "", None, None),
    "blurs": (str, "", None, None),
    "disc": (str, "", None, None),
    "cone_offsets": (str, "", None, None),
    "light": (str, "", None, None),
}
# URL key -> NozzleLook field it overrides.
_LOOK_KEYS = {"blur": "blur_sigma", "dirt": "dirt", "glints": "glints"}
_RECORD_LIMIT = 5000
log = logging.getLogger(__name__)
_CACHED_TICKS = 4
_REMEMBERED_FRAMES = 256


def parse_sim_url(url):
    """Settings of a ``sim://`` URL, defaults filled in.

    Raises
    ------
    HelperError
        ``invalid_params`` naming the unknown key or bad value.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise HelperError("invalid_params", "%r is not a sim:// camera URL." % (url,))
    settings = {key: spec[1] for key, spec in _KEYS.items()}
    for key, text in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key not in _KEYS:
            raise HelperError(
                "invalid_params",
                "Unknown sim:// camera key %r; known keys: %s." % (key, ", ".join(sorted(_KEYS))))
        parser, _, low, high = _KEYS[key]
        try:
            value = parser(float(text)) if parser is int else parser(text)
        except ValueError:
            raise HelperError("invalid_params",
                              "sim:// camera key %s=%r is not a number." % (key, text))
        if parser is not str and (not math.isfinite(value) or value < low or value > high):
            raise HelperError("invalid_params",
                              "sim:// camera key %s=%s is outside %s..%s." % (key, text, low, high))
        settings[key] = value
    if settings["looks"] not in ("random", "ring_light", "mixed"):
        raise HelperError("invalid_params", "sim:// camera key looks=%s must be "
                          "random, ring_light or mixed." % (settings["looks"],))
    settings["nozzles"] = _number_list("nozzles", settings["nozzles"], 0.05, 3.0,
                                       "diameters in mm")
    settings["exposures"] = _number_list("exposures", settings["exposures"], 0.05, 10.0,
                                         "exposure factors")
    settings["blurs"] = _number_list("blurs", settings["blurs"], 0.0, 20.0,
                                     "blur sigmas in px")
    settings["light"] = _number_list("light", settings["light"], 0.0, 4.0, "B,G,R gains")
    if settings["light"] and len(settings["light"]) != 3:
        raise HelperError("invalid_params", "sim:// camera key light=%s must be three "
                          "gains, B,G,R." % ",".join("%g" % v for v in settings["light"]))
    settings["disc"] = _disc(settings["disc"])
    settings["cone_offsets"] = _offset_list(settings["cone_offsets"])
    if settings["kinematics"] not in ("cartesian", "corexy"):
        raise HelperError("invalid_params", "sim:// camera key kinematics=%s must be "
                          "cartesian or corexy." % (settings["kinematics"],))
    return settings


def _number_list(key, text, low, high, what):
    """Per-tool numbers from ``key=a,b,...`` (``nozzles``, ``exposures``)."""
    if not text:
        return []
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise HelperError("invalid_params", "sim:// camera key %s=%s must be "
                          "%s separated by commas." % (key, text, what))
    if not all(low <= v <= high for v in values):
        raise HelperError("invalid_params", "sim:// camera key %s=%s: each must be "
                          "%g..%g." % (key, text, low, high))
    return values


def _disc(text):
    """``(u, v, r)`` of ``disc=u,v,r`` (px), or None."""
    if not text:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or \
            not 1.0 <= values[2] <= 1000.0:
        raise HelperError("invalid_params", "sim:// camera key disc=%s must be "
                          "u,v,r: the disc's centre and radius in px (r 1..1000)."
                          % (text,))
    return values
def _offset_list(text):
    """Per-tool ``(dx, dy)`` from ``cone_offsets=0.5:0,-0.5:0.2`` (bore radii)."""
    if not text:
        return []
    try:
        pairs = [tuple(float(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        pairs = [()]
    if not all(len(p) == 2 and all(math.isfinite(v) and abs(v) <= 3.0 for v in p)
               for p in pairs):
        raise HelperError("invalid_params", "sim:// camera key cone_offsets=%s must be "
                          "dx:dy pairs in bore radii (each -3..3) separated by "
                          "commas." % (text,))
    return pairs


class SimCamera(CameraSource):
    """A simulated nozzle camera over a simulated printer.

    Parameters
    ----------
    url : str
        ``sim://?key=value&...`` (see the module docstring).
    """

    def __init__(self, url):
        self.url = url
        self.settings = s = parse_sim_url(url)
        self._clock = time.monotonic
        self._lock = threading.Lock()          # machine state
        self._render_lock = threading.Lock()   # frame cache and recording
        self._closed = threading.Event()
        self.camera = sim_machine.CameraModel(
            size=(s["width"], s["height"]), mm_per_px=s["mm_per_px"],
            rotation_deg=s["rotation"], mirror=bool(s["mirror"]),
            camera_xy=(s["camera_x"], s["camera_y"]))
        offsets = sim_machine.draw_tool_offsets(
            np.random.default_rng([s["seed"], 1]), s["tools"], s["offset_range"])
        self.machine = sim_machine.Machine(
            offsets, backlash=s["backlash"], step=s["step"],
            start_xy=(s["camera_x"], s["camera_y"]),
            history=max(10.0, 4 * s["latency"]), kinematics=s["kinematics"])
        self.bore_radius_px = self.bore_radius(0)
        self._looks = [None] * s["tools"]
        self._cache = {}       # tick -> Frame
        self._shown = {}       # frame timestamp -> (MachineState, true pixel or None)
        self._recorded = 0
        self._heard = False
        self._record_index = None
        if s["record"]:
            try:
                os.makedirs(s["record"], exist_ok=True)
            except OSError as exc:
                raise HelperError("invalid_params", "The sim:// camera cannot record into "
                                  "%s: %s." % (s["record"], exc.strerror or exc))
            self._record_index = os.path.join(s["record"], "frames.jsonl")

    # -- machine state ---------------------------------------------------
    def set_machine_state(self, position, tool, moves=()):
        """Hear the commanded toolhead position, the active tool and the moves since last time.

        Parameters
        ----------
        position : sequence of float
            Commanded raw toolhead X, Y[, Z], mm.
        tool : str or int
            Active tool's name; a trailing integer is the tool number.
        moves : sequence of sequences, optional
            Commanded positions passed through since the previous state,
            oldest first (so backlash sees every reversal).
        """
        try:
            if position is not None:
                position = [float(position[0]), float(position[1])]
            moves = [[float(m[0]), float(m[1])] for m in (moves or ())]
        except (TypeError, ValueError, IndexError):
            raise HelperError("invalid_params",
                              "machine.position and machine.moves must be lists of "
                              "numbers [x, y, z].")
        with self._lock:
            if position is None:    # only the tool changed
                position = self.machine.current.commanded
            # The first state heard is where the machine already was when
            # the camera opened, not a move made at that moment.
            when = self._clock() if self._heard else 0.0
            self._heard = True
            self.machine.command(when, position, tool, moves)

    def state_at(self, when):
        """The simulated machine's :class:`~ktamv_helper.simulation.machine.MachineState` at ``when``."""
        with self._lock:
            return self.machine.state_at(when)

    # -- frames ----------------------------------------------------------
    def tick_time(self, tick):
        """``time.monotonic()`` stamp of frame tick ``tick``."""
        return tick / self.settings["fps"]

    def get_frame(self, not_before=None, timeout=5.0):
        """Return the newest frame not older than ``not_before`` (see module docstring)."""
        fps = self.settings["fps"]
        now = self._clock()
        deadline = now + max(float(timeout), 0.0)
        tick = math.floor(now * fps)
        if not_before is not None:
            first = math.ceil(float(not_before) * fps - 1e-9)
            if self.tick_time(first) < not_before:
                first += 1      # just_after(a tick's time): the next tick
            tick = max(tick, first)
        when = self.tick_time(tick)
        if when > deadline:
            self._sleep_until(deadline)
            raise HelperError(
                "camera_timeout",
                "The simulated camera had no frame newer than the requested time "
                "within the %.1f s timeout." % (float(timeout),),
                {"not_before": not_before, "timeout": timeout})
        self._sleep_until(when)
        if self._closed.is_set():
            raise HelperError("camera_unreachable", "The simulated camera was closed.")
        return self._frame(tick)

    def _sleep_until(self, when):
        delay = when - self._clock()
        if delay > 0:
            self._closed.wait(delay)

    def _frame(self, tick):
        with self._render_lock:
            frame = self._cache.get(tick)
            if frame is None:
                when = self.tick_time(tick)
                state = self.state_at(when - self.settings["latency"])
                image, pixel = self.render(state, tick)
                frame = Frame(image, when)
                self._cache[tick] = frame
                self._shown[when] = (state, pixel)
                for old in sorted(self._cache)[:-_CACHED_TICKS]:
                    del self._cache[old]
                for old in sorted(self._shown)[:-_REMEMBERED_FRAMES]:
                    del self._shown[old]
                if self._record_index:
                    self._record(frame, tick, state, pixel)
            return frame

    def shown(self, frame):
        """What ``frame`` shows: ``(MachineState, true bore pixel or None)``.

        Known for the newest few hundred frames; None for older ones.
        """
        with self._render_lock:
            return self._shown.get(frame.timestamp)

    def bore_radius(self, tool):
        """Tool ``tool``'s bore radius in px (``nozzles``, else ``nozzle``)."""
        s = self.settings
        diameters = s["nozzles"]
        diameter = diameters[tool] if tool < len(diameters) else s["nozzle"]
        return 0.5 * diameter / s["mm_per_px"]

    def look(self, tool):
        """The :class:`~ktamv_helper.simulation.render.NozzleLook` of tool number ``tool``."""
        from ktamv_helper.simulation import render
        if tool >= len(self._looks):   # no such tool: like tool 0 (as its offset is)
            tool = 0
        if self._looks[tool] is None:
            overrides = {field: self.settings[key] for key, field in _LOOK_KEYS.items()
                         if self.settings[key] is not None}
            # Sensor noise and JPEG are added per frame in render(); the look
            # renders the steady scene.
            overrides.update(noise_sigma=0.0, jpeg_quality=0)
            if tool < len(self.settings["cone_offsets"]):
                overrides["cone_offset"] = self.settings["cone_offsets"][tool]
            if tool < len(self.settings["exposures"]):
                overrides["exposure"] = self.settings["exposures"][tool]
            if tool < len(self.settings["blurs"]):
                overrides["blur_sigma"] = self.settings["blurs"][tool]
            if self.settings["light"]:
                # One LED ring lights every tool.
                overrides["light_tint"] = tuple(self.settings["light"])
            rng = np.random.default_rng([self.settings["seed"], 2, tool])
            looks = self.settings["looks"]
            if looks == "ring_light" or (looks == "mixed" and tool % 2 == 1):
                # A brass nozzle under a ring light: the confounders.
                self._looks[tool] = render.ring_light_look(rng, **overrides)
            else:
                self._looks[tool] = render.random_look(rng, **overrides)
        return self._looks[tool]

    def sensor(self, tool):
        """``(noise_sigma, jpeg_quality)`` of tool ``tool``'s frames, drawn from the seed."""
        rng = np.random.default_rng([self.settings["seed"], 3, tool])
        noise = rng.uniform(0.5, 5.0)
        quality = int(rng.choice([0, 75, 90]))
        if self.settings["noise"] is not None:
            noise = self.settings["noise"]
        if self.settings["jpeg"] is not None:
            quality = self.settings["jpeg"]
        return noise, quality

    def render(self, state, tick):
        """Render the frame of ``tick`` showing ``state``.

        Returns
        -------
        image : ndarray of uint8
        pixel : tuple of float or None
            Where the bore centre truly is, None when out of view.
        """
        import cv2
        from ktamv_helper.simulation import render
        pixel = self.camera.pixel_of(state.nozzle)
        if not self.camera.in_view(pixel):
            pixel = None
        look = self.look(state.tool)
        # The scene (background texture, glints) is fixed per tool; only the
        # sensor noise changes from frame to frame.
        scene_rng = np.random.default_rng([self.settings["seed"], 4, state.tool])
        image = render.render_nozzle(self.camera.size, pixel,
                                     self.bore_radius(state.tool), look, scene_rng)
        if self.settings["disc"]:
            # On the lens: over the scene, under the sensor's noise.
            render.static_disc(image, self.settings["disc"])
        noise, quality = self.sensor(state.tool)
        if noise > 0:
            frame_rng = np.random.default_rng([self.settings["seed"], 5, tick % (2**32)])
            level = image.astype(np.float32)
            # Shot-like: brighter pixels are noisier.
            level += frame_rng.standard_normal(level.shape, np.float32) * \
                (noise * np.sqrt(np.clip(level, 16, 255) / 128.0))
            image = np.clip(level + 0.5, 0, 255).astype(np.uint8)
        if quality:
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return image, pixel

    def _record(self, frame, tick, state, pixel):
        if self._recorded >= _RECORD_LIMIT:
            return
        import cv2
        self._recorded += 1
        name = "frame-%05d.jpg" % self._recorded
        folder = self.settings["record"]
        entry = {"file": name, "time": frame.timestamp, "tick": tick, "tool": state.tool,
                 "commanded": list(state.commanded), "nozzle": list(state.nozzle),
                 "pixel": list(pixel) if pixel else None}
        try:
            if not cv2.imwrite(os.path.join(folder, name), frame.image,
                               [cv2.IMWRITE_JPEG_QUALITY, 92]):
                raise OSError("OpenCV could not write %s" % (name,))
            with open(self._record_index, "a") as index:
                index.write(json.dumps(entry) + "\n")
        except OSError as exc:
            # Recording is a by-product: a full disk must not stop the camera.
            log.warning("sim:// camera stops recording frames into %s: %s", folder, exc)
            self._record_index = None

    # -- truth -----------------------------------------------------------
    def truth(self):
        """The simulation's ground truth (the helper's ``sim_truth`` method).

        ``tools[N]`` is tool N's offset in ``KTAMV_GET_OFFSET``'s convention:
        the toolhead position that centres tool N minus the one that centres
        tool 0, mm.
        """
        s = self.settings
        return {
            "tools": self.machine.truth(),
            "nozzle_offsets": [[float(x), float(y)] for x, y in self.machine.tool_offsets],
            "camera_xy": [s["camera_x"], s["camera_y"]],
            "mm_per_px": s["mm_per_px"],
            "rotation_deg": s["rotation"],
            "mirror": bool(s["mirror"]),
            "backlash": s["backlash"],
            "step": s["step"],
            "kinematics": s["kinematics"],
            "latency": s["latency"],
            "fps": s["fps"],
            "frame_size": [s["width"], s["height"]],
            "bore_radius_px": self.bore_radius_px,
            "cone_offsets": [list(self.look(tool).cone_offset) for tool in range(s["tools"])],
            "seed": s["seed"],
        }

    def close(self):
        """Stop: pending and later ``get_frame`` calls fail at once."""
        self._closed.set()
