"""Detection benchmark: this project's detector against TAMV's blob cascade.

``python -m ktamv_helper bench [--frames N] [--empty M] [--timing-frames K]
[--seed S]`` renders a seeded set of nozzle frames (noise, defocus, JPEG,
dim/glaring/uneven light, dirt, ooze, glints, a second dark hole; bore
radius 6-40 px at 640x480) and frames with no nozzle, runs both detectors on
one thread, and prints one Markdown table: detection rate, false
detections, centre error, milliseconds per frame at three resolutions and
the speed ratio. Both detectors see the same frames in the same run, so the
ratio holds on a busy machine even when the absolute times drift.
"""

import argparse
import math
import sys
import time

import cv2
import numpy as np

from ktamv_helper.bench_tamv import TamvCascade
from ktamv_helper.detection import DEFAULT_MIN_RADIUS, detect_nozzle
from ktamv_helper.simulation.render import random_look, render_nozzle

SIZES = [(640, 480), (1280, 720), (1920, 1080)]
# A detection farther than this from the truth counts as wrong, not found.
WRONG_PX = 2.0


def nozzle_frame(rng, size, radius_range):
    """One rendered frame and its true bore centre."""
    look = random_look(rng)
    lo, hi = radius_range
    radius = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
    margin = radius * look.collar_ratio + 2.0
    center = (float(rng.uniform(margin, size[0] - margin)),
              float(rng.uniform(margin, size[1] - margin)))
    return render_nozzle(size, center, radius, look, rng), center


def _radius_range(size):
    """Bore radii for a frame size: 6-40 px at 640x480, scaled, at most 80."""
    scale = size[1] / 480.0
    return 6.0 * max(1.0, scale * 0.75), min(80.0, 40.0 * scale)


def _timed(detector, image):
    start = time.perf_counter()
    result = detector(image)
    return result, (time.perf_counter() - start) * 1000.0


def run(frames=400, empty=100, timing_frames=20, seed=1, progress=None):
    """Run both detectors; return per-detector statistics.

    Returns
    -------
    dict
        ``{name: {"found", "wrong", "false", "errors", "ms": {size: [...]}}}``
        plus ``"set"`` describing the frames.
    """
    cv2.setNumThreads(1)
    tamv = TamvCascade()
    detectors = {
        # The printer's default radius range (min_radius 3 px, max 0.7 H).
        "kTAMV detect_nozzle": lambda im: (lambda d: d and d.center)(
            detect_nozzle(im, DEFAULT_MIN_RADIUS)),
        "TAMV blob cascade": tamv.detect,
    }
    stats = {name: {"found": 0, "wrong": 0, "false": 0, "errors": [],
                    "ms": {size: [] for size in SIZES}} for name in detectors}
    rng = np.random.default_rng(seed)
    size = SIZES[0]
    for i in range(frames):
        image, truth = nozzle_frame(rng, size, _radius_range(size))
        for name, detect in detectors.items():
            center, ms = _timed(detect, image)
            stats[name]["ms"][size].append(ms)
            if center is None:
                continue
            error = math.hypot(center[0] - truth[0], center[1] - truth[1])
            if error > WRONG_PX:
                stats[name]["wrong"] += 1
            else:
                stats[name]["found"] += 1
                stats[name]["errors"].append(error)
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{frames} nozzle frames")
    for _ in range(empty):
        image = render_nozzle(size, None, 15.0, random_look(rng), rng)
        for name, detect in detectors.items():
            if detect(image) is not None:
                stats[name]["false"] += 1
    for size in SIZES[1:]:
        for _ in range(timing_frames):
            image, _ = nozzle_frame(rng, size, _radius_range(size))
            for name, detect in detectors.items():
                stats[name]["ms"][size].append(_timed(detect, image)[1])
    stats["set"] = {"frames": frames, "empty": empty, "timing_frames": timing_frames,
                    "seed": seed}
    return stats


def format_table(stats):
    """The Markdown table of a :func:`run` result."""
    names = [n for n in stats if n != "set"]
    s = stats["set"]
    rows = [("nozzle frames found (error ≤ %g px)" % WRONG_PX,
             lambda st: "%.1f %% (%d/%d)" % (100.0 * st["found"] / max(s["frames"], 1),
                                             st["found"], s["frames"])),
            ("wrong detections (error > %g px)" % WRONG_PX,
             lambda st: "%d" % st["wrong"]),
            ("false detections on no-nozzle frames",
             lambda st: "%d/%d" % (st["false"], s["empty"])),
            ("centre error median / p95 / max, px",
             lambda st: "%.3f / %.3f / %.3f" % (
                 np.median(st["errors"]), np.percentile(st["errors"], 95),
                 np.max(st["errors"])) if st["errors"] else "n/a")]
    for size in SIZES:
        rows.append(("ms per frame at %dx%d, median (p95)" % size,
                     lambda st, size=size: "%.1f (%.1f)" % (
                         np.median(st["ms"][size]), np.percentile(st["ms"][size], 95))))
    ours, base = stats[names[0]], stats[names[1]]
    ratio = "  ".join("%dx%d: %.0fx" % (size[0], size[1], np.median(base["ms"][size]) /
                                        max(np.median(ours["ms"][size]), 1e-9))
                      for size in SIZES)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, cell in rows:
        lines.append("| %s | %s |" % (label, " | ".join(cell(stats[n]) for n in names)))
    lines.append("| speed ratio (baseline median ms / ours) | %s | 1x |" % ratio)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ktamv_helper bench",
        description="Compare the nozzle detector with TAMV's blob cascade on "
                    "a seeded set of rendered frames (single thread).")
    parser.add_argument("--frames", type=int, default=400,
                        help="nozzle frames at 640x480 (default 400)")
    parser.add_argument("--empty", type=int, default=100,
                        help="frames without a nozzle (default 100)")
    parser.add_argument("--timing-frames", type=int, default=20,
                        help="frames per larger resolution for timing (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="set seed (default 1)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.empty < 0 or args.timing_frames < 1:
        parser.error("--frames and --timing-frames must be >= 1, --empty >= 0")
    started = time.perf_counter()
    stats = run(args.frames, args.empty, args.timing_frames, args.seed,
                progress=lambda text: print(text, file=sys.stderr, flush=True))
    print("Benchmark set: seed %d, %d nozzle frames (640x480, bore radius 6-40 px), "
          "%d without a nozzle; %d frames per larger size for timing; one thread."
          % (args.seed, args.frames, args.empty, args.timing_frames))
    print()
    print(format_table(stats))
    print()
    print("OpenCV %s, numpy %s; total %.0f s" % (cv2.__version__, np.__version__,
                                                time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
