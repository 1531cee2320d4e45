"""How the nozzle detector does on frames it was not developed on.

``python test/bench_generalisation.py [--frames N] [--empty M] [--seed S]``
draws N nozzle frames from the independent photo-like generator
(``test/photolike.py``: 320x240, 640x480, 1280x720 and 1920x1080 in turn,
bore radius 6-80 px where it fits), M generator frames without a nozzle,
and every real photograph bundled with scikit-image (``test/real_photos.py``,
as shipped and rescaled to three camera sizes). It runs ``detect_nozzle``
on one thread and prints one Markdown table: per condition, frames, found
(within 2 px), wrong (farther), centre error median / p95 / max; then false
detections (the real photos also darkened) and milliseconds per frame.
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
import real_photos  # noqa: E402
from ktamv_helper.detection import DEFAULT_MIN_RADIUS, detect_nozzle  # noqa: E402
from ktamv_helper.detection.stacking import sum_draws  # noqa: E402

SIZES = [(320, 240), (640, 480), (1280, 720), (1920, 1080)]
WRONG_PX = 2.0
# The printer's radius range when [ktamv] leaves min_radius / max_radius
# out: what a user who changes nothing gets (None: 0.7 x the frame height).
MIN_RADIUS, MAX_RADIUS = DEFAULT_MIN_RADIUS, None
# The real photos are also shown dim, as an under-exposed camera would:
# this exposure factor and sensor noise (grey levels). Loosening the
# score's contrast term once found darkened nozzles and also dim textures.
DIM_EXPOSURE, DIM_NOISE = 0.25, 2.0
# A dim camera's frames are summed by the helper into a longer exposure
# (ktamv_helper.detection.stacking): the real photos at these exposures,
# each frame with its own noise, summed as the helper would.
SUMMED_EXPOSURES = (0.25, 0.1)


def darkened(image, rng, exposure=DIM_EXPOSURE, noise=DIM_NOISE):
    """``image`` under-exposed by ``exposure``, with sensor noise."""
    out = image.astype(np.float32) * np.float32(exposure)
    out += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def summed_dim(image, rng, exposure):
    """What the helper searches for a still scene at ``exposure``: as many
    darkened frames, each with its own noise, as the first one's dimness
    asks for, summed."""
    return sum_draws(lambda: darkened(image, rng, exposure))


def conditions(scene):
    """The condition labels a nozzle frame counts under."""
    width, height = scene.size
    radius = scene.bore_radius / scene.sensor_scale
    blur = scene.defocus / scene.sensor_scale
    labels = ["all", "resolution %dx%d" % (width, height)]
    labels.append("bore radius " + ("6-12" if radius < 12 else "12-25" if radius < 25
                                    else "25-50" if radius < 50 else "50-80") + " px")
    labels.append("light " + ("dim (<0.5)" if scene.exposure < 0.5 else
                              "normal" if scene.exposure < 0.95 else "blown (>0.95)"))
    labels.append("defocus " + ("sharp (<0.7 px)" if blur < 0.7 else
                                "mild (0.7-1.5 px)" if blur < 1.5 else "strong (1.5-3 px)"))
    labels.append("JPEG " + ("none" if not scene.jpeg_quality else
                             "q60-95" if scene.jpeg_quality >= 60 else "q25-59"))
    labels.append("tilt " + ("0" if scene.tilt_deg == 0 else
                             "<10 deg" if scene.tilt_deg < 10 else "10-20 deg"))
    labels.append("metal " + scene.metal)
    for flag, label in [(scene.glint, "glint in bore"), (scene.ooze, "ooze over rim"),
                        (scene.chamfer >= 0.1, "chamfer >= 0.1 r"),
                        (scene.burnt > 0, "burnt residue"),
                        (scene.sensor_scale < 1, "upscaled sensor"),
                        (scene.sharpen > 0, "in-camera sharpening")]:
        if flag:
            labels.append(label)
    return labels


def _timed(image):
    start = time.perf_counter()
    found = detect_nozzle(image, MIN_RADIUS, MAX_RADIUS)
    return found, (time.perf_counter() - start) * 1000.0


def run(frames=400, empty=100, seed=1, progress=None):
    """Run the detector on the whole set; return the statistics."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    rows = {}
    ms = {size: [] for size in SIZES}
    for i in range(frames):
        size = SIZES[i % len(SIZES)]
        image, truth, scene = photolike.random_frame(rng, size)
        found, elapsed = _timed(image)
        ms[size].append(elapsed)
        error = math.hypot(found.center[0] - truth[0],
                           found.center[1] - truth[1]) if found else None
        for label in conditions(scene):
            row = rows.setdefault(label, {"frames": 0, "wrong": 0, "errors": []})
            row["frames"] += 1
            if error is not None and error > WRONG_PX:
                row["wrong"] += 1
            elif error is not None:
                row["errors"].append(error)
        if progress and (i + 1) % 50 == 0:
            progress("%d/%d nozzle frames" % (i + 1, frames))
    false_generated = 0
    for i in range(empty):
        image, _, _ = photolike.random_frame(rng, SIZES[i % len(SIZES)], nozzle=False)
        false_generated += detect_nozzle(image, MIN_RADIUS, MAX_RADIUS) is not None
    photos = list(real_photos.frames())
    false_photos = [label for label, image in photos
                    if detect_nozzle(image, MIN_RADIUS, MAX_RADIUS) is not None]
    dim_rng = np.random.default_rng([seed, 5])
    false_dim = [label for label, image in photos
                 if detect_nozzle(darkened(image, dim_rng), MIN_RADIUS, MAX_RADIUS) is not None]
    false_summed = {}
    for exposure in SUMMED_EXPOSURES:
        sum_rng = np.random.default_rng([seed, 6, round(1000 * exposure)])
        false_summed[exposure] = [
            label for label, image in photos
            if detect_nozzle(summed_dim(image, sum_rng, exposure), MIN_RADIUS,
                             MAX_RADIUS) is not None]
    return {"rows": rows, "ms": ms, "empty": empty, "false_generated": false_generated,
            "photos": len(photos), "false_photos": false_photos, "false_dim": false_dim,
            "false_summed": false_summed,
            "set": {"frames": frames, "seed": seed}}


def format_table(stats):
    """One Markdown table of a :func:`run` result."""
    lines = ["| condition | frames | found (≤ %g px) | wrong | error median / p95 / max, px |"
             % WRONG_PX, "|---|---:|---:|---:|---|"]
    order = ["all"] + sorted(k for k in stats["rows"] if k != "all")
    for label in order:
        row = stats["rows"][label]
        e = row["errors"]
        err = "%.3f / %.3f / %.3f" % (np.median(e), np.percentile(e, 95), max(e)) if e else "n/a"
        lines.append("| %s | %d | %.1f %% (%d) | %d | %s |" % (
            label, row["frames"], 100.0 * len(e) / row["frames"], len(e), row["wrong"], err))
    lines.append("| false detections, generated frames without a nozzle | %d | | %d | |"
                 % (stats["empty"], stats["false_generated"]))
    lines.append("| false detections, real photos (scikit-image) | %d | | %d | %s |"
                 % (stats["photos"], len(stats["false_photos"]),
                    ", ".join(stats["false_photos"])))
    lines.append("| false detections, real photos at x%g exposure, noise %g | %d | | %d | %s |"
                 % (DIM_EXPOSURE, DIM_NOISE, stats["photos"], len(stats["false_dim"]),
                    ", ".join(stats["false_dim"])))
    for exposure, found in stats["false_summed"].items():
        lines.append("| false detections, real photos at x%g exposure, noise %g, frames "
                     "summed as the helper does | %d | | %d | %s |"
                     % (exposure, DIM_NOISE, stats["photos"], len(found), ", ".join(found)))
    for size in SIZES:
        t = stats["ms"][size]
        if t:
            lines.append("| ms per frame at %dx%d, median (p95) | %d | | | %.1f (%.1f) |"
                         % (size[0], size[1], len(t), np.median(t), np.percentile(t, 95)))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=400, help="nozzle frames (default 400)")
    parser.add_argument("--empty", type=int, default=100,
                        help="generated frames without a nozzle (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="set seed (default 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stats = run(args.frames, args.empty, args.seed,
                progress=lambda text: print(text, file=sys.stderr, flush=True))
    print("Photo-like set: seed %d, %d nozzle frames, %d without; %d real photos; "
          "radius range %g px to 0.7 x the frame height (the [ktamv] defaults); "
          "one thread." % (args.seed, args.frames, args.empty, stats["photos"],
                           MIN_RADIUS))
    print()
    print(format_table(stats))
    print()
    print("OpenCV %s, numpy %s; total %.0f s" % (cv2.__version__, np.__version__,
                                                time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
