"""What a predicted position saves a centring look.

``python test/bench_centring.py [--frames N] [--seed S]`` draws photo-like
nozzle frames (``test/photolike.py``: 640x480, 1280x720 and 1920x1080 in
turn) and runs ``find_bore`` on each as centring does after a move: with
``near`` (the true centre plus a 1 px model error, reach 4 px, the extra's
``PREDICTION_PX``), and again with every candidate measured wherever it is
(the baseline: ``NEAR_MARGIN`` infinite, as before candidates were passed
over), on one thread. It prints how often the two answers are the same
(centre, radius and refusal), the milliseconds of each and their ratio,
then the same for a prediction 60 px off (the nozzle is not where the
move put it: the refusal names the bores seen elsewhere).
"""

import argparse
import math
import os
import sys
import time

import cv2
import numpy as np

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import photolike  # noqa: E402
from ktamv_helper.detection import DEFAULT_MIN_RADIUS, find_bore  # noqa: E402
from ktamv_helper.detection import search  # noqa: E402

SIZES = [(640, 480), (1280, 720), (1920, 1080)]


def _timed(image, near, margin):
    saved, search.NEAR_MARGIN = search.NEAR_MARGIN, margin
    try:
        start = time.perf_counter()
        result = find_bore(image, DEFAULT_MIN_RADIUS, near=near)
        return result, (time.perf_counter() - start) * 1000.0
    finally:
        search.NEAR_MARGIN = saved


def _same(a, b):
    if (a.detection is None) != (b.detection is None) or a.refusal != b.refusal:
        return False
    if a.detection is None:
        return a.message == b.message
    return a.detection == b.detection


def run(frames=60, seed=1):
    """``{case: {"same": n, "ms": [...], "base_ms": [...]}}``."""
    rng = np.random.default_rng(seed)
    stats = {case: {"same": 0, "ms": [], "base_ms": []}
             for case in ("near the nozzle", "60 px off")}
    for i in range(frames):
        image, truth, _ = photolike.random_frame(rng, SIZES[i % len(SIZES)])
        for case, offset in (("near the nozzle", 1.0), ("60 px off", 60.0)):
            near = (truth[0] + offset, truth[1], 4.0)
            result, ms = _timed(image, near, search.NEAR_MARGIN)
            base, base_ms = _timed(image, near, math.inf)
            stats[case]["same"] += _same(result, base)
            stats[case]["ms"].append(ms)
            stats[case]["base_ms"].append(base_ms)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    stats = run(args.frames, args.seed)
    print("| prediction | frames | same answer | ms median (p95) | every candidate measured, "
          "ms median (p95) | ratio of medians |")
    print("|---|---:|---:|---|---|---:|")
    for case, st in stats.items():
        ms, base = np.array(st["ms"]), np.array(st["base_ms"])
        print("| %s | %d | %d | %.1f (%.1f) | %.1f (%.1f) | %.1fx |" % (
            case, len(ms), st["same"], np.median(ms), np.percentile(ms, 95),
            np.median(base), np.percentile(base, 95), np.median(base) / np.median(ms)))
    print("\nseed %d; OpenCV %s, numpy %s" % (args.seed, cv2.__version__, np.__version__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
