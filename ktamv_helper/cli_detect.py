"""``python -m ktamv_helper detect IMAGE... [--json] [--annotate DIR]``.

Runs the nozzle detector on image files, one output line per image. With
``--json`` each line is one JSON object::

    {"image": path, "found": bool, "center": [u, v], "radius": r,
     "score": s, "elapsed_ms": t}

(``center``, ``radius`` and ``score`` are null when no nozzle was found;
``elapsed_ms`` is the detection time alone, without start-up or reading the
file). When none was found for a reason the detector can name (two rival
circles, a clipped or blank picture, a bore smaller than ``--min-radius``)
a ``why`` sentence is added. A file that cannot be read gives ``found: false`` and an ``error``
sentence, and the exit status is 1; otherwise it is 0.
"""

import argparse
import json
import math
import os
import sys
import time

from ktamv_helper.limits import DEFAULT_MIN_RADIUS

EXIT_OK, EXIT_UNREADABLE, EXIT_USAGE = 0, 1, 2


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m ktamv_helper detect",
        description="Find the nozzle bore centre in image files.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image")
    parser.add_argument("--annotate", metavar="DIR",
                        help="write each image with the detection drawn on it to DIR")
    # The same range as the [ktamv] section's min_radius / max_radius, so
    # what works here works on the printer.
    parser.add_argument("--min-radius", type=float, default=DEFAULT_MIN_RADIUS,
                        help="smallest bore radius searched, px (default 3, "
                             "as the [ktamv] option min_radius)")
    parser.add_argument("--max-radius", type=float, default=None,
                        help="largest bore radius searched, px (default 0.7 "
                             "x the image height)")
    return parser


def _annotated_path(folder, image_path, taken):
    stem = os.path.splitext(os.path.basename(image_path))[0] or "image"
    name, n = f"{stem}.annotated.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.annotated.png"
    taken.add(name)
    return os.path.join(folder, name)


def _text_line(record):
    if "error" in record:
        return f"{record['image']}: error: {record['error']}"
    if not record["found"]:
        why = f": {record['why']}" if record.get("why") else ""
        return (f"{record['image']}: no nozzle found ({record['elapsed_ms']:.1f} "
                f"ms){why}")
    u, v = record["center"]
    return (f"{record['image']}: nozzle at u={u:.3f} v={v:.3f} px, radius "
            f"{record['radius']:.2f} px, score {record['score']:.3f} "
            f"({record['elapsed_ms']:.1f} ms)")


def detect_file(path, min_radius=DEFAULT_MIN_RADIUS, max_radius=None):
    """Detect in one file; return ``(record, image, detection)``."""
    import cv2
    from ktamv_helper.detection import exposure_problem, find_bore, smaller_bore, to_gray

    record = {"image": path, "found": False, "center": None, "radius": None,
              "score": None, "elapsed_ms": None}
    if not os.path.isfile(path):
        record["error"] = "no such file"
        return record, None, None
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        record["error"] = "not an image OpenCV can read"
        return record, None, None
    start = time.perf_counter()
    search = find_bore(image, min_radius, max_radius)
    record["elapsed_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
    detection = search.detection
    if detection is None:
        why = search.message or exposure_problem(to_gray(image))
        small = None if why else smaller_bore(image, min_radius)
        if small is not None:
            why = ("a bore of %.1f px radius is at (%.1f, %.1f), below --min-radius "
                   "%g: if that is the nozzle, use --min-radius %g (min_radius: %g "
                   "in [ktamv])" % (small.radius, small.center[0], small.center[1],
                                    min_radius, math.floor(small.radius),
                                    math.floor(small.radius)))
        if why:
            record["why"] = why
    else:
        record.update(found=True,
                      center=[round(detection.center[0], 4), round(detection.center[1], 4)],
                      radius=round(detection.radius, 4), score=detection.score)
    return record, image, detection


def main(argv=None):
    """Entry point; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return EXIT_USAGE if stop.code else EXIT_OK
    if not 0 < args.min_radius <= (args.max_radius or math.inf):
        sys.stderr.write("detect: need 0 < --min-radius <= --max-radius\n")
        return EXIT_USAGE
    if args.annotate:
        try:
            os.makedirs(args.annotate, exist_ok=True)
        except OSError as err:
            sys.stderr.write(f"detect: cannot create {args.annotate}: {err}\n")
            return EXIT_USAGE
    status, taken = EXIT_OK, set()
    for path in args.images:
        record, image, detection = detect_file(path, args.min_radius, args.max_radius)
        if "error" in record:
            status = EXIT_UNREADABLE
        elif args.annotate:
            _write_annotated(args.annotate, path, image, detection, record, taken)
        line = json.dumps(record) if args.json else _text_line(record)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return status


def _write_annotated(folder, path, image, detection, record, taken):
    import cv2
    from ktamv_helper.annotate import annotate

    # annotate() adds the detection's own line (or none when not found).
    lines = [os.path.basename(path)] + ([] if detection else ["no nozzle found"])
    out = _annotated_path(folder, path, taken)
    if not cv2.imwrite(out, annotate(image, detection, status_lines=lines)):
        sys.stderr.write(f"detect: could not write {out}\n")
