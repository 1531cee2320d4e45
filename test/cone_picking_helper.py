"""The real vision helper, but it measures the nozzle's cone, not its bore (tests only).

Seen from below, a nozzle's dark cone inside its bright body is "a dark disc
inside a bright ring" just as the bore is, and a detector that takes it
reports the cone's centre. On a real nozzle the cone is turned on another
axis than the bore is drilled on, so every tool's offset comes out wrong by
the two centres' distance, and the detection itself looks perfect. This is
that detector: the real helper (protocol, cameras, frame consensus, the
size check) whose bore measurement is replaced by a circle fitted to the
cone's outer edge of the same nozzle. ``ktamv.py`` runs it through its
``helper_command`` option::

    helper_command: /path/python /path/test/cone_picking_helper.py [--no-size]

``--no-size`` drops ``nozzle_diameter``, ``mm_per_px`` and
``expected_radius`` from ``detect`` requests: a detector that knows no
sizes, so nothing tells it the circle is too big. Each refusal's error code
is written to stderr (``ktamv.py`` copies it into klippy.log) as
``cone-picking helper: refused: CODE``.
"""

import dataclasses
import math
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ktamv_helper import server, service  # noqa: E402
from ktamv_helper.detection import search  # noqa: E402
from ktamv_helper.detection.edges import fit_circle_robust  # noqa: E402

RAYS = 180
_measure_bore = search._measure


def cone_edge(gray, center, radius):
    """Centre and radius of the dark-to-bright edge nearest ``radius`` round ``center``.

    On each ray the edge is the steepest rise within a quarter of the
    radius, placed to a fraction of a pixel; a robust circle fit drops the
    rays that glints or the hex's corners spoil.
    """
    angles = np.arange(RAYS) * (2.0 * math.pi / RAYS)
    radii = np.arange(0.75 * radius, 1.25 * radius, 0.25, dtype=np.float32)
    map_x = (center[0] + np.cos(angles)[:, None] * radii).astype(np.float32)
    map_y = (center[1] + np.sin(angles)[:, None] * radii).astype(np.float32)
    prof = cv2.remap(gray.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)
    prof = cv2.GaussianBlur(prof, (9, 1), 1.5)        # along each ray only
    rise = np.diff(prof, axis=1)
    k = np.clip(np.argmax(rise, axis=1), 1, rise.shape[1] - 2)
    rows = np.arange(RAYS)
    a, b, c = rise[rows, k - 1], rise[rows, k], rise[rows, k + 1]
    shift = np.where(a - 2 * b + c < 0, 0.5 * (a - c) / (a - 2 * b + c), 0.0)
    edge = radii[k] + 0.25 * (0.5 + np.clip(shift, -0.5, 0.5))
    seen = (prof > -0.5).all(axis=1)
    points = np.column_stack([center[0] + np.cos(angles) * edge,
                              center[1] + np.sin(angles) * edge])[seen]
    fit = fit_circle_robust(points, tolerance=max(0.5, 0.02 * radius))
    return None if fit is None else ((float(fit[0][0]), float(fit[0][1])), float(fit[1]))


def measure_cone(gray, noise, center, radius, min_radius, hidden=None):
    """The real detector's bore, reported as its cone's outer edge (rings[2])."""
    bore = _measure_bore(gray, noise, center, radius, min_radius, hidden)
    if bore is None or len(bore.rings) < 3:
        return None
    cone = cone_edge(gray, bore.center, bore.rings[2])
    if cone is None:
        return None
    return dataclasses.replace(bore, center=cone[0], radius=round(cone[1], 2),
                               rings=tuple(bore.rings[2:]))


def _sizeless(init):
    def without_sizes(self, params, tolerance):
        params = {k: v for k, v in params.items()
                  if k not in ("nozzle_diameter", "mm_per_px", "expected_radius")}
        init(self, params, tolerance)
    return without_sizes


def _logged(refused):
    def log_refusal(self, refusals, seen):
        error = refused(self, refusals, seen)
        sys.stderr.write("cone-picking helper: refused: %s\n" % (error.code,))
        sys.stderr.flush()
        return error
    return log_refusal


def main(argv):
    search._measure = measure_cone
    service.BoreExpectation.refused = _logged(service.BoreExpectation.refused)
    if "--no-size" in argv:
        service.BoreExpectation.__init__ = _sizeless(service.BoreExpectation.__init__)
    return server.main([a for a in argv if a != "--no-size"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
