"""Detection on real photos under known warps, and on the confounder looks.

``python -m ktamv_helper bench --photos DIR [--variants N] [--ring-light N]
[--conditions N] [--seed S]``:
for each photo in DIR the detector's answer on the photo itself is the
reference; each variant (:func:`ktamv_helper.simulation.warps.random_warp`:
rotation, zoom, shift, exposure with clipping, blur, noise, rescale ×0.5/×2)
is detected again and compared with the reference carried through the same
warp. Variants are cut to the part that comes from the photo (what lies
beyond a photo's edge is unknown; a mirrored border would continue a bore
that runs past the edge as a mirrored dark disc). Then the renderer's ring-light brass look (clipped tip face, dark cone,
coloured light, vignetting, lens smudge, low JPEG quality) is scored against
its exact truth. Prints Markdown tables: found, wrong circles (radius off by
more than 30 %, or centre off by more than 2 px and 30 % of the radius),
refusals, how many were found of the variants whose bore is at least
``SMALLEST_BORE`` px (a ×0.5 rescale of a 2-4 px endoscope bore falls
below that), consistency median / p95 / max (px, and as a fraction of the
bore radius) and ms per frame; and, where
DIR has a README naming bore centres ("`name.png` … ≈ (u, v)"), how far the
reference is from each. Last, both rendered looks under the camera
conditions of :data:`CONDITIONS` (heavy defocus, over- and under-exposure),
against their exact truth, and each photo under :data:`PHOTO_CONDITIONS`
and :data:`SUMMED_CONDITIONS` (dim frames summed as the helper sums a dim
camera's) against its own reference, with how many of the misses the error's
exposure hint would have explained.
"""

import argparse
import math
import os
import re
import sys
import time

import cv2
import numpy as np

from ktamv_helper.detection import find_bore
from ktamv_helper.detection.frame import exposure_problem, to_gray
from ktamv_helper.detection.stacking import sum_draws
from ktamv_helper.simulation.render import random_look, render_nozzle, ring_light_look
from ktamv_helper.simulation.warps import (Warp, apply_warp, random_warp, warp_point,
                                           warp_radius)

# A detection is the wrong circle when its radius is this far off ...
WRONG_RADIUS = 0.3
# ... or its centre farther than this many px and this fraction of the radius.
WRONG_PX, WRONG_CENTER_FRACTION = 2.0, 0.3
# The detector's smallest bore radius (find_bore's min_radius), px.
SMALLEST_BORE = 2.0
_README_CENTRE = re.compile(r"`([^`]+\.(?:png|jpe?g))`[^\n]*?≈ \(([-\d.]+), ([-\d.]+)\)")


def readme_centres(folder):
    """Bore centres named in the folder's README.md: {file name: (u, v)}."""
    path = os.path.join(folder, "README.md")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {m.group(1): (float(m.group(2)), float(m.group(3)))
                for m in _README_CENTRE.finditer(f.read())}


def photos(folder):
    """(name, BGR image) of every PNG/JPEG in ``folder``, sorted by name;
    the image is None for a file OpenCV cannot read."""
    return [(name, cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR))
            for name in sorted(os.listdir(folder))
            if name.lower().endswith((".png", ".jpg", ".jpeg"))]


def classify(detection, center, radius):
    """``"found"`` with its error, ``"wrong"``, or ``"missed"``."""
    if detection is None:
        return "missed", None
    error = math.hypot(detection.center[0] - center[0], detection.center[1] - center[1])
    if abs(detection.radius / radius - 1.0) > WRONG_RADIUS or \
            error > max(WRONG_PX, WRONG_CENTER_FRACTION * radius):
        return "wrong", error
    return "found", error


def _timed_search(image):
    start = time.perf_counter()
    search = find_bore(image)
    return search, (time.perf_counter() - start) * 1000.0


def score_photo(image, variants, rng):
    """Reference detection and per-variant records of one photo."""
    reference, ms = _timed_search(image)
    ref = reference.detection
    records = []
    if ref is None:
        return None, records
    for _ in range(variants):
        warp = random_warp(rng, crop=True)
        search, ms = _timed_search(apply_warp(image, warp, rng))
        radius = warp_radius(ref.radius, warp)
        kind, error = classify(search.detection, warp_point(ref.center, warp, image.shape),
                               radius)
        records.append({"kind": kind, "error": error, "ms": ms, "radius": radius,
                        "refused": search.refusal})
    return ref, records


# Rendered frames' size (px).
RENDER_SIZE = (640, 480)
# Rendered bores span the detector's whole promised range, log-uniformly:
# from this many px ...
RING_LIGHT_SMALLEST = 3.0
# ... to this fraction of the frame height (a microscope-zoom camera).
RING_LIGHT_LARGEST_OF_HEIGHT = 0.45
# Bore radius bands (px) whose found counts are printed, so a gap in the
# range shows (it once hid at 80-100 px behind a range that ended at 60).
RADIUS_BANDS = (3, 6, 12, 24, 48, 96, 216)


def score_ring_light(frames, rng, size=RENDER_SIZE):
    """Records of rendered ring-light frames against their exact truth."""
    records = []
    largest = RING_LIGHT_LARGEST_OF_HEIGHT * size[1]
    for _ in range(frames):
        look = ring_light_look(rng)
        radius = float(np.exp(rng.uniform(math.log(RING_LIGHT_SMALLEST), math.log(largest))))
        margin = radius * 2.0 + 4
        center = (float(rng.uniform(margin, size[0] - margin)) if margin < size[0] / 2 else size[0] / 2,
                  float(rng.uniform(margin, size[1] - margin)) if margin < size[1] / 2 else size[1] / 2)
        search, ms = _timed_search(render_nozzle(size, center, radius, look, rng))
        kind, error = classify(search.detection, center, radius)
        records.append({"kind": kind, "error": error, "ms": ms, "radius": radius,
                        "refused": search.refusal})
    return records


# B, G, R gains of LED light as a colour sensor sees it: a blue LED also
# reaches the green pixels a little, an amber one the green more; a deep
# blue one hardly any but the blue.
BLUE_LIGHT = (1.0, 0.3, 0.08)
DEEP_BLUE_LIGHT = (1.0, 0.12, 0.0)
AMBER_LIGHT = (0.05, 0.45, 1.0)

# The conditions a nozzle camera meets that the looks' own ranges stop
# short of: (label, look fields, bore radius range px). Heavy defocus
# blurs a small bore over half its radius; over-exposure clips the face
# and the body into one white area; under-exposure leaves a face of ~20
# grey levels; a deep-blue LED leaves luma a fifth of the range.
CONDITIONS = (
    ("defocus sigma 3 px", {"blur_sigma": 3.0}, (4.0, 15.0)),
    ("defocus sigma 5 px", {"blur_sigma": 5.0}, (10.0, 40.0)),
    ("over-exposed x2", {"exposure": 2.0}, (4.0, 60.0)),
    ("over-exposed x3", {"exposure": 3.0}, (4.0, 60.0)),
    ("under-exposed x0.15", {"exposure": 0.15}, (4.0, 60.0)),
    ("under-exposed x0.08, noise 4", {"exposure": 0.08, "noise_sigma": 4.0}, (4.0, 60.0)),
    ("deep-blue LED light", {"light_tint": DEEP_BLUE_LIGHT}, (4.0, 60.0)),
)
LOOKS = (("ring-light brass", ring_light_look), ("random look", random_look))


def score_conditions(frames, rng, size=RENDER_SIZE):
    """Records per (look, condition) of rendered frames against their truth."""
    results = {}
    for look_name, make_look in LOOKS:
        for label, fields, (lo, hi) in CONDITIONS:
            records = []
            for _ in range(frames):
                look = make_look(rng, **fields)
                radius = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
                center = (size[0] / 2 + rng.uniform(-40, 40), size[1] / 2 + rng.uniform(-40, 40))
                search, ms = _timed_search(render_nozzle(size, center, radius, look, rng))
                kind, error = classify(search.detection, center, radius)
                centre_right = error is not None and error <= WRONG_PX
                records.append({"kind": kind, "error": error, "ms": ms, "radius": radius,
                                "refused": search.refusal,
                                "radius_only": kind == "wrong" and centre_right})
            results["%s, %s (r %g-%g)" % (look_name, label, lo, hi)] = records
    return results


# The same conditions on real photos, as warp fields: each variant also
# gets a mild random pose (rotation ±6°, shift ±5 %) and sensor noise
# σ 2-4, so the draws differ. "x3 finer camera" shows the photo at three
# times the pixels (a sharper sensor at the same view) with defocus of
# 3 px in its own pixels. "MJPEG qN" encodes the variant as a USB camera's
# MJPEG stream does (quality 50 is a common default; 30, a starved link).
# "LED light" relights the photo in that colour (its channels scaled).
# "frames summed" sums as many draws of the variant (one pose, each with
# its own noise) as its dimness asks, as the helper does with a dim
# camera's frames (ktamv_helper.detection.stacking).
PHOTO_CONDITIONS = (
    ("defocus sigma 1.5 px", {"blur_sigma": 1.5}),
    ("defocus sigma 3 px", {"blur_sigma": 3.0}),
    ("over-exposed x2", {"exposure": 2.0}),
    ("over-exposed x3", {"exposure": 3.0}),
    ("under-exposed x0.3", {"exposure": 0.3}),
    ("under-exposed x0.15", {"exposure": 0.15}),
    ("x3 finer camera, defocus sigma 3 px", {"blur_sigma": 1.0, "rescale": 3.0}),
    ("MJPEG q50", {"jpeg_quality": 50}),
    ("MJPEG q30", {"jpeg_quality": 30}),
    ("blue LED light", {"light": BLUE_LIGHT}),
    ("deep-blue LED light", {"light": DEEP_BLUE_LIGHT}),
    ("amber LED light", {"light": AMBER_LIGHT}),
)
# Drawn from a random stream of their own, so the rows above stay
# comparable with runs made before these were added.
SUMMED_CONDITIONS = (
    ("under-exposed x0.15, frames summed", {"exposure": 0.15, "summed": True}),
    ("under-exposed x0.08, frames summed", {"exposure": 0.08, "summed": True}),
)


def _condition_warp(rng, fields):
    """A variant's Warp for one of :data:`PHOTO_CONDITIONS` (warps blur
    before rescaling, in the photo's own pixels)."""
    return Warp(rotation_deg=float(rng.uniform(-6, 6)),
                shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
                noise_sigma=float(rng.uniform(2, 4)), crop=True, **fields)


def score_photo_conditions(image, reference, frames, rng, conditions=PHOTO_CONDITIONS):
    """Records per condition of ``conditions`` for one photo,
    against its reference detection carried through each warp; a missed
    frame records whether the detector's exposure check would have named
    the cause (``hinted``)."""
    results = {}
    for label, fields in conditions:
        records = []
        fields = dict(fields)
        summed = fields.pop("summed", False)
        for _ in range(frames):
            warp = _condition_warp(rng, fields)
            if summed:
                variant = sum_draws(lambda: apply_warp(image, warp, rng))
            else:
                variant = apply_warp(image, warp, rng)
            search, ms = _timed_search(variant)
            radius = warp_radius(reference.radius, warp)
            kind, error = classify(search.detection,
                                   warp_point(reference.center, warp, image.shape), radius)
            records.append({"kind": kind, "error": error, "ms": ms, "radius": radius,
                            "refused": search.refusal,
                            "radius_only": kind == "wrong" and error <= WRONG_PX,
                            "hinted": kind == "missed" and not search.refusal and
                            exposure_problem(to_gray(variant)) is not None})
        results[label] = records
    return results


def found_by_radius(records):
    """``found/all`` per bore radius band of ``RADIUS_BANDS``, one line."""
    parts = []
    for lo, hi in zip(RADIUS_BANDS, RADIUS_BANDS[1:]):
        band = [r for r in records if lo <= r["radius"] < hi]
        if band:
            parts.append("%g-%g px %d/%d" % (lo, hi, sum(r["kind"] == "found" for r in band),
                                             len(band)))
    return "found by bore radius: " + ", ".join(parts)


def table_row(label, records):
    """One Markdown row of a set of records."""
    found = [r["error"] for r in records if r["kind"] == "found"]
    relative = [r["error"] / r["radius"] for r in records if r["kind"] == "found"]
    wrong = sum(r["kind"] == "wrong" for r in records)
    refused = sum(bool(r["refused"]) for r in records if r["kind"] == "missed")
    big = [r for r in records if r["radius"] >= SMALLEST_BORE]
    stats = ("%.3f / %.3f / %.3f (%.2f / %.2f / %.2f %%)" % (
        np.median(found), np.percentile(found, 95), max(found), 100 * np.median(relative),
        100 * np.percentile(relative, 95), 100 * max(relative)) if found else "n/a")
    return "| %s | %d | %d | %d of %d | %d | %d | %s | %.1f |" % (
        label, len(records), len(found), sum(r["kind"] == "found" for r in big), len(big),
        wrong, refused, stats,
        np.median([r["ms"] for r in records]) if records else float("nan"))


HEADER = ("| source | variants | found | found, bore ≥ 2 px | wrong circle | refused | "
          "consistency median / p95 / max, px (% of radius) | ms per frame, median |\n"
          "|---|---|---|---|---|---|---|---|")


def print_conditions(results):
    """The conditions table: :data:`HEADER` plus how many of the wrong
    circles had the centre right (a defocused small bore's half-way
    radius shrinks; its centre does not move)."""
    print(HEADER)
    for label, records in results.items():
        print(table_row(label, records))
    print()
    _print_radius_only(results)


def print_photo_conditions(results):
    """The photos' conditions table, and how many misses the exposure
    check would have named (the user's error then says what to change)."""
    print(HEADER)
    for label, records in results.items():
        print(table_row(label, records))
    missed = [r for records in results.values() for r in records
              if r["kind"] == "missed" and not r["refused"]]
    print()
    print("Of the %d missed without a refusal, %d came with an exposure hint "
          "(clipped, very dark or blank) in the error." % (
              len(missed), sum(r["hinted"] for r in missed)))
    _print_radius_only(results)


def _print_radius_only(results):
    radius_only = sum(r["radius_only"] for records in results.values() for r in records)
    wrong = sum(r["kind"] == "wrong" for records in results.values() for r in records)
    print("Of the %d wrong circles, %d had the centre within %g px of where it belongs "
          "and only the radius more than %d %% off." % (wrong, radius_only, WRONG_PX,
                                                        100 * WRONG_RADIUS))


def run(folder, variants=60, ring_light=60, seed=1, conditions=0):
    """Print the tables; return the per-source records."""
    rng = np.random.default_rng(seed)
    lines, refs, results, references = [HEADER], [], {}, []
    if folder and os.path.isdir(folder):
        centres = readme_centres(folder)
        for name, image in photos(folder):
            if image is None:
                lines.append("| %s | 0 | not an image OpenCV can read | | | | | |" % name)
                continue
            ref, records = score_photo(image, variants, rng)
            results[name] = records
            if ref is None:
                lines.append("| %s (%dx%d) | 0 | reference not found | | | | | |"
                             % (name, image.shape[1], image.shape[0]))
                refs.append("| %s | not found | | |" % name)
                continue
            references.append((name, image, ref))
            lines.append(table_row("%s (%dx%d, r %.1f)" % (name, image.shape[1],
                                                          image.shape[0], ref.radius), records))
            given = centres.get(name)
            off = ("%.1f" % math.hypot(ref.center[0] - given[0], ref.center[1] - given[1])
                   if given else "n/a")
            refs.append("| %s | (%.2f, %.2f), r %.2f, rings %s | %s | %s |" % (
                name, ref.center[0], ref.center[1], ref.radius,
                ", ".join("%g" % r for r in ref.rings), "(%g, %g)" % given if given else "n/a",
                off))
    if ring_light:
        records = score_ring_light(ring_light, rng)
        results["ring_light"] = records
        lines.append(table_row("renderer: ring-light brass, %dx%d, r %g-%g (truth)" % (
            RENDER_SIZE + (RING_LIGHT_SMALLEST, RING_LIGHT_LARGEST_OF_HEIGHT * RENDER_SIZE[1])),
            records))
    print("\n".join(lines))
    if ring_light:
        print()
        print("Ring-light " + found_by_radius(results["ring_light"]))
    if refs:
        print()
        print("| photo | reference detection | README centre | distance, px |")
        print("|---|---|---|---|")
        print("\n".join(refs))
    if conditions:
        print()
        found = score_conditions(conditions, rng)
        results.update(found)
        print_conditions(found)
    if conditions and references:
        on_photos = {}
        for name, image, ref in references:
            for label, records in score_photo_conditions(image, ref, conditions, rng).items():
                on_photos["%s, %s" % (name, label)] = records
        summed_rng = np.random.default_rng([seed, 2])
        for name, image, ref in references:
            for label, records in score_photo_conditions(image, ref, conditions, summed_rng,
                                                         SUMMED_CONDITIONS).items():
                on_photos["%s, %s" % (name, label)] = records
        results.update(on_photos)
        print()
        print_photo_conditions(on_photos)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ktamv_helper bench --photos DIR",
        description="Score the detector on real photos under known warps and on the "
                    "renderer's ring-light look (single thread).")
    parser.add_argument("--photos", required=True, help="folder of nozzle photos")
    parser.add_argument("--variants", type=int, default=60, help="warps per photo (60)")
    parser.add_argument("--ring-light", type=int, default=60,
                        help="rendered ring-light frames (60; 0 = none)")
    parser.add_argument("--conditions", type=int, default=30,
                        help="frames per rendered look, or per photo, and camera "
                             "condition (defocus, over-, under-exposure; 30; 0 = none)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.photos):
        print("bench: no folder %s; scoring the rendered looks only" % args.photos,
              file=sys.stderr)
    started = time.perf_counter()
    run(args.photos if os.path.isdir(args.photos) else None, args.variants,
        args.ring_light, args.seed, args.conditions)
    print()
    print("seed %d, %d variants per photo; OpenCV %s, numpy %s; total %.0f s"
          % (args.seed, args.variants, cv2.__version__, np.__version__,
             time.perf_counter() - started))
    return 0
