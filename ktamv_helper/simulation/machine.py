"""Physics of the simulated printer behind the ``sim://`` camera.

Pure, deterministic pieces (time is always passed in, never read here):

- :func:`tool_index` maps an active tool's name to a tool number.
- :func:`quantize_xy` and :func:`take_up_backlash` model the drive: the
  motors stand on whole microsteps (cartesian X/Y or corexy A/B) and the
  carriage follows through a dead band on each axis (the backlash).
- :class:`CameraModel` maps a nozzle's machine XY to the pixel where the
  upward-looking camera sees it (scale, rotation, mirror).
- :class:`Machine` keeps the timeline of physical nozzle positions so a frame
  can show where the nozzle was a moment ago (latency).
"""

import bisect
import dataclasses
import math
import re

import numpy as np

_TRAILING_NUMBER = re.compile(r"(\d+)\s*$")


def tool_index(name):
    """Tool number for an active tool's name.

    A trailing integer is the tool number (``extruder1``, ``T1``, ``1`` and
    ``1`` as an int are tool 1); anything else (``extruder``, ``T``, ``""``,
    None) is tool 0.

    Examples
    --------
    >>> tool_index("extruder2"), tool_index("extruder"), tool_index(3)
    (2, 0, 3)
    """
    if name is None:
        return 0
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return max(int(name), 0)
    match = _TRAILING_NUMBER.search(str(name))
    return int(match.group(1)) if match else 0


def quantize(value, step):
    """Round ``value`` (mm) to a whole number of microsteps of ``step`` mm.

    Halves round away from zero, as Klipper's ``get_mcu_position`` does.
    ``step`` <= 0 means no quantisation.
    """
    if step <= 0:
        return float(value)
    steps = value / step
    whole = math.floor(steps + 0.5) if steps >= 0 else math.ceil(steps - 0.5)
    return whole * step


def quantize_xy(xy, step, kinematics="cartesian"):
    """Toolhead XY the motors really reach for commanded ``xy``.

    Each motor stands on a whole number of microsteps of ``step`` mm. On a
    cartesian printer the motors are X and Y; on a corexy printer they are
    A = X + Y and B = X - Y (Klipper's ``stepper_x`` and ``stepper_y``), so
    the reachable XY grid is diagonal with half-step spacing.
    """
    x, y = float(xy[0]), float(xy[1])
    if kinematics == "corexy":
        a, b = quantize(x + y, step), quantize(x - y, step)
        return (0.5 * (a + b), 0.5 * (a - b))
    if kinematics != "cartesian":
        raise ValueError("kinematics must be 'cartesian' or 'corexy'")
    return (quantize(x, step), quantize(y, step))


def take_up_backlash(carriage, motor, backlash):
    """New carriage position after the motor moved to ``motor`` (one axis).

    The carriage sits in a dead band of width ``backlash`` around the motor
    position: it only moves when the motor pushes against one side of the
    band, and then trails the motor by ``backlash / 2`` on the side opposite
    to the motion. A reversal therefore costs the full backlash before the
    carriage moves again, and a small reversal does not move it at all.

    Parameters
    ----------
    carriage : float
        Current physical carriage position, mm.
    motor : float
        New motor (microstep) position, mm.
    backlash : float
        Total play of the axis, mm (>= 0).

    Returns
    -------
    float
        The new physical carriage position, mm.
    """
    half = 0.5 * backlash
    if motor - carriage > half:
        return motor - half
    if carriage - motor > half:
        return motor + half
    return carriage


def draw_tool_offsets(rng, count, offset_range):
    """Physical XY offsets of each tool's nozzle from tool 0's, mm.

    Tool 0 is the reference (0, 0); the others are drawn uniformly from
    ``[-offset_range, offset_range]`` on each axis.

    Returns
    -------
    ndarray, shape (count, 2)
    """
    offsets = rng.uniform(-offset_range, offset_range, size=(count, 2))
    offsets[0] = 0.0
    return offsets


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """An upward-looking camera seeing the nozzle plane.

    The image's ``+u`` axis points along ``rotation_deg`` in machine XY; its
    ``+v`` axis is ``+u`` turned by +90 degrees when ``mirror`` is true (the
    view from below, as a real upward camera sees it) or by -90 degrees when
    false (as one would see the bed from above). These are exactly the
    ``rotation_deg`` and ``mirrored`` a correct ``fit_camera_model`` reports.

    Attributes
    ----------
    size : tuple of int
        ``(width, height)`` in pixels.
    mm_per_px : float
        Scale at the nozzle plane.
    rotation_deg : float
        Direction of the image's ``+u`` axis in machine XY.
    mirror : bool
        See above.
    camera_xy : tuple of float
        Machine XY of the point seen at the image centre.
    """

    size: tuple
    mm_per_px: float
    rotation_deg: float
    mirror: bool
    camera_xy: tuple

    @property
    def image_center(self):
        """Centre of the image in OpenCV pixel convention, ``((W-1)/2, (H-1)/2)``."""
        return ((self.size[0] - 1) / 2.0, (self.size[1] - 1) / 2.0)

    @property
    def matrix(self):
        """The 2x2 map from a pixel step ``(du, dv)`` to machine mm ``(dx, dy)``."""
        theta = math.radians(self.rotation_deg)
        cos, sin = math.cos(theta), math.sin(theta)
        hand = 1.0 if self.mirror else -1.0
        return self.mm_per_px * np.array([[cos, -hand * sin],
                                          [sin, hand * cos]])

    def pixel_of(self, nozzle_xy):
        """Pixel ``(u, v)`` where a nozzle at machine ``nozzle_xy`` appears."""
        delta = np.asarray(nozzle_xy, dtype=float)[:2] - np.asarray(self.camera_xy, dtype=float)
        du, dv = np.linalg.solve(self.matrix, delta)
        cu, cv = self.image_center
        return (float(cu + du), float(cv + dv))

    def machine_of(self, pixel):
        """Machine XY of the nozzle plane point seen at ``pixel``."""
        cu, cv = self.image_center
        delta = self.matrix @ np.array([pixel[0] - cu, pixel[1] - cv], dtype=float)
        return (float(self.camera_xy[0] + delta[0]), float(self.camera_xy[1] + delta[1]))

    def in_view(self, pixel):
        """True when ``pixel`` lies inside the frame."""
        return (-0.5 <= pixel[0] <= self.size[0] - 0.5
                and -0.5 <= pixel[1] <= self.size[1] - 0.5)


@dataclasses.dataclass(frozen=True)
class MachineState:
    """What the printer physically was at one moment.

    Attributes
    ----------
    time : float
        ``time.monotonic()`` when this state began.
    commanded : tuple of float
        Commanded toolhead XY, mm.
    carriage : tuple of float
        Physical carriage XY (microsteps and backlash applied), mm.
    tool : int
        Active tool number.
    nozzle : tuple of float
        Physical XY of the active tool's nozzle, mm.
    """

    time: float
    commanded: tuple
    carriage: tuple
    tool: int
    nozzle: tuple


class Machine:
    """The simulated printer's XY drive and tools.

    Not thread-safe by itself; :class:`ktamv_helper.cameras.sim.SimCamera`
    guards it with a lock.

    Parameters
    ----------
    tool_offsets : array_like, shape (N, 2)
        Physical nozzle offset of each tool from tool 0, mm.
    backlash : float
        Play of each of X and Y, mm.
    step : float
        Microstep size, mm (0 = continuous).
    start_xy : tuple of float
        Commanded (and physical) toolhead XY before the first command.
    history : float
        Seconds of past states kept for latency look-ups.
    kinematics : str
        ``"cartesian"`` or ``"corexy"``: which motors are quantised (see
        :func:`quantize_xy`).
    """

    def __init__(self, tool_offsets, backlash=0.0, step=0.0125, start_xy=(0.0, 0.0),
                 history=10.0, kinematics="cartesian"):
        self.tool_offsets = np.asarray(tool_offsets, dtype=float).reshape(-1, 2)
        self.backlash = float(backlash)
        self.step = float(step)
        self.history = float(history)
        self.kinematics = kinematics
        carriage = quantize_xy(start_xy, self.step, kinematics)
        first = MachineState(float("-inf"), tuple(float(c) for c in start_xy[:2]),
                             carriage, 0, self._nozzle(carriage, 0))
        self._states = [first]
        self._times = [first.time]

    def _nozzle(self, carriage, tool):
        offset = self.tool_offsets[tool] if tool < len(self.tool_offsets) else (0.0, 0.0)
        return (float(carriage[0] + offset[0]), float(carriage[1] + offset[1]))

    @property
    def current(self):
        """The newest :class:`MachineState`."""
        return self._states[-1]

    def command(self, time, position, tool, moves=()):
        """Hear a commanded position (and the moves that led there) at ``time``.

        Parameters
        ----------
        time : float
            When the state arrived (``time.monotonic()``); not earlier than
            the previous call's.
        position : sequence of float
            Commanded toolhead X, Y (Z and beyond ignored), mm.
        tool : str or int
            Active tool's name or number (see :func:`tool_index`).
        moves : sequence of sequences, optional
            Commanded positions passed through since the previous command,
            oldest first; each one takes up backlash in turn.

        Returns
        -------
        MachineState
            The new current state.
        """
        last = self.current
        time = max(float(time), last.time)
        carriage = list(last.carriage)
        for target in list(moves) + [position]:
            motors = quantize_xy(target, self.step, self.kinematics)
            for axis in (0, 1):
                carriage[axis] = take_up_backlash(carriage[axis], motors[axis], self.backlash)
        tool_number = tool_index(tool)
        carriage = tuple(float(c) for c in carriage)
        commanded = (float(position[0]), float(position[1]))
        if (commanded, carriage, tool_number) == (last.commanded, last.carriage, last.tool):
            return last
        state = MachineState(time, commanded, carriage, tool_number,
                             self._nozzle(carriage, tool_number))
        self._states.append(state)
        self._times.append(time)
        self._forget_before(time - self.history)
        return state

    def state_at(self, time):
        """The :class:`MachineState` in force at ``time`` (the latest that began at or before it)."""
        index = bisect.bisect_right(self._times, time) - 1
        return self._states[max(index, 0)]

    def _forget_before(self, time):
        # Keep the state in force at `time`; drop everything older.
        index = bisect.bisect_right(self._times, time) - 1
        if index > 0:
            del self._states[:index]
            del self._times[:index]

    def truth(self):
        """Per-tool offsets in ``KTAMV_GET_OFFSET``'s convention, mm.

        The toolhead position that centres tool N minus the one that centres
        tool 0: the negated physical nozzle offset of tool N from tool 0.
        """
        return [[float(-(o[0] - self.tool_offsets[0][0])) + 0.0,
                 float(-(o[1] - self.tool_offsets[0][1])) + 0.0] for o in self.tool_offsets]
