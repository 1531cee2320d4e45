"""Choose the bore among everything dark and round in a frame, or refuse.

1. **Candidates**: dark round islands (:func:`.candidates.find_candidates`),
   then, unless a sure bore was found already, the peaks of gradient voting
   (:func:`.candidates.vote_candidates`) for radii from ``VOTE_MIN_RADIUS``
   up, which also find circles that run past the frame's edge.
2. **Structure**: each candidate's edge is measured quickly, then the ring
   structure round the fitted centre is read out to ``FAMILY_SPAN`` times
   its radius (:func:`.rings.find_rings`). The bore is the dark core up to
   the first significant rise, so a candidate that was an outer ring of the
   same nozzle (the dark cone inside the bright body) or a darker patch
   inside a bigger bore is moved to the family's real bore.
3. **Measurement** of that bore at full resolution (:func:`.edges.measure_bore`).
4. **Choice**: one bore per family; families on a feature known to be static
   (``exclude``) or away from where a known move put the nozzle (``near``)
   are dropped (with a predicted position, candidates far from it are not
   even measured unless nothing is found near it); with an expected radius
   (the nozzle's diameter and the calibrated scale), only bores of about
   that size count; two plausible bores farther apart than the tolerance
   are refused rather than guessed between (a smaller dark spot on the best
   bore's tip face is no rival: the face is solid metal); a best bore lying
   on the tip face of a bore whose rim is too hidden to measure (ooze,
   residue) is refused too: it may be a spot on the nozzle's face.
"""

import dataclasses
import math

from ktamv_helper.detection.candidates import (find_candidates, search_scales,
                                               vote_candidates)
from ktamv_helper.detection.edges import (CLIPPED_LEVEL, MIN_CLOSURE,
                                          MIN_COMPLETENESS, measure_bore,
                                          score_measurement)
from ktamv_helper.detection.frame import estimate_noise, to_gray
from ktamv_helper.detection.rings import edge_width, find_rings

# Rings are read out to this many bore radii: a 0.4 mm nozzle's cone and
# hex reach ~8-10 radii, so the whole family is seen from any of its rings.
FAMILY_SPAN = 10.0
# A quick measurement and the ring structure agree on the bore when their
# radii differ by less than this fraction (else the candidate is moved to
# the structure's bore and measured again).
RADIUS_AGREEMENT = 0.25
# ... or by less than this many px: the structure's profile is sampled every
# 0.5 px round a centre that may be a little off, and its half-way level (to
# the face's peak) differs from the edge's (to the face's typical level), so
# on a blurred 3 px bore the two radii differ by up to a pixel.
RADIUS_SLACK_PX = 1.0
# The structure read round a centre this close (px) to the measured one is
# reused (its ring radii differ by less than the profile's 0.5 px step).
SAME_RINGS_PX = 0.5
# Voting looks for circles from this radius up (px): below it, votes of
# noise and texture pile up as easily as a bore's (blurred noise then shows
# "bores"), and dark islands find small bores well.
VOTE_MIN_RADIUS = 8.0
# Default largest bore: a zoomed camera's bore may fill most of the frame
# and run past its edges (fraction of the frame height). At 0.7 a centred
# bore still shows about half its rim in a 4:3 frame, as the edge
# measurement requires.
MAX_RADIUS_OF_HEIGHT = 0.7
# find_bore's own floor, px: blur pulls a 3 px bore's half-way edge to ~2 px.
SMALLEST_BORE = 2.0
# With an expected radius, bores within this factor of it count (give or
# take the edge's width, see _could_be_sized): a chamfer or defocus makes
# the dark opening look up to ~1.5x the nominal bore, the tip face and the
# cone are 2.5x-10x.
SIZE_FACTOR = 1.8
# A nozzle's tip face is the wall round the bore: at least this many bore
# radii wide even on a thin-walled 0.8 mm nozzle (~0.6); the lighter rim of
# a chamfered screw hole is thinner. Judged only where the face's outer
# edge lies well inside the largest ring round the bore that the frame
# shows whole (FACE_SEEN of it).
MIN_FACE_WIDTH = 0.4
FACE_SEEN = 0.9
# Two bores are rivals when the weaker scores at least this fraction of the
# stronger.
RIVAL_SCORE = 0.8
# A rival must be about as sharp as the best bore: the camera is focused
# on the nozzle's tip, so things with edges this many times wider (plus
# the slack, px, of the profile's sampling) lie out of that plane, as the
# heater block's texture or dirt on the lens do, and are no second bore.
# (A rival sharper than the best still refuses.)
FOCUS_RATIO, FOCUS_SLACK_PX = 3.0, 1.0
# Smallest accepted score.
MIN_SCORE = 0.5
# A bore scoring this high, with no rival yet, ends the search of finer
# search copies (their candidates are the same or smaller things).
EARLY_ACCEPT = 0.95
# A candidate's centre (an island's moments, a voting peak, the circle
# through a cut island's arc) lies within its radius of its family's bore
# centre, even with ooze over part of the rim; with a predicted position,
# candidates farther than its reach plus this many of their radii are not
# measured.
NEAR_MARGIN = 2.0
# The edge fit's RMS residual must stay below this many px, or this
# fraction of the radius.
MAX_RMS_PX, MAX_RMS_FRACTION = 0.5, 0.06
# A bore is a hole: little of the light that enters it comes back, so its
# dark core lies below this fraction of its tip face's level (at most 0.36
# on ~960 sharply seen true bores over every bench: rendered and generated
# looks, the real photos under exposures x0.3-x3 and LED light); a grey
# disc with a bright rim (a filled screw hole, a spot on a plate) lies
# above. Judged where blur cannot have filled the core: where the radius
# is at least SHARP_RADII edge widths (edge width ~1.35 sigma, so blur
# fills under 0.1 % of the core's centre).
MAX_CORE_FRACTION = 0.5
SHARP_RADII = 3.0
# Blur fills a small disc's core with its face's light, but a hole stays
# plainly darker than its face however blurred: a true bore's core reached
# 0.70 of an unclipped face at most (a 4 px endoscope bore defocused by
# sigma 3, the most blurred the survey above saw found), while grey discs
# and texture blobs that scored as bores sat at 0.77-0.95 (a blob in a
# simulated heater block: a dip of 8 levels under a face of 174).
MAX_BLURRED_CORE_FRACTION = 0.75
# A bore whose edge shows on at least this share of its rim, but under
# MIN_COMPLETENESS, is hidden rather than absent (ooze or burnt residue
# over the rest): measure_bore itself needs half the rim in view.
HIDDEN_COMPLETENESS = 0.5


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detected nozzle bore.

    Attributes
    ----------
    center : (float, float)
        Bore centre ``(u, v)`` in the frame's pixels, OpenCV convention (the
        centre of pixel (0, 0) is (0.0, 0.0)).
    radius : float
        Bore radius, px.
    score : float
        Confidence between 0 and 1.
    rings : tuple of float
        Radii of the rings seen round the bore, inside out (the first is the
        bore's own edge), px.
    rms : float
        RMS distance of the edge points from the fitted circle, px.
    edge_width : float
        How far the edge is spread (25 % to 75 % of its rise), px: the
        true radius may differ from ``radius`` by about this much on a
        defocused bore.
    """

    center: tuple
    radius: float
    score: float
    rings: tuple = ()
    rms: float = 0.0
    edge_width: float = 0.0


@dataclasses.dataclass(frozen=True)
class BoreSearch:
    """What :func:`find_bore` saw.

    Attributes
    ----------
    detection : Detection or None
        The bore, or None when there is none or the choice was refused.
    candidates : tuple of Detection
        Every verified bore, one per concentric family, best first.
    refusal : str or None
        ``"ambiguous"``, ``"size_mismatch"`` or ``"not_near"`` when bores
        were seen but none could be chosen safely.
    message : str or None
        A sentence saying why, for the user.
    """

    detection: object
    candidates: tuple = ()
    refusal: object = None
    message: object = None


def _radii_agree(a, b):
    """Two measurements of one bore's radius (px)."""
    return abs(a - b) <= max(RADIUS_AGREEMENT * min(a, b), RADIUS_SLACK_PX)


def _structure(gray, noise, center, radius, min_radius):
    """Centre, bore radius and rings of the family a candidate belongs to.

    The ring structure is read first where the candidate is (a voting peak
    knows its centre better than its radius), else after a quick edge fit;
    the bore it names is measured quickly and the structure read again from
    that centre, until the two agree.
    """
    rings = find_rings(gray, center, FAMILY_SPAN * radius, noise, 0.7 * min_radius)
    if rings is None:
        first = measure_bore(gray, noise, center, radius, quick=True, closed_hint=True)
        if first is None:
            return None
        center, radius = first["center"], first["radius"]
        rings = find_rings(gray, center, FAMILY_SPAN * radius, noise, 0.7 * min_radius)
        if rings is None:
            return None
    for _ in range(3):
        quick = measure_bore(gray, noise, center, rings.bore_radius, quick=True,
                             closed_hint=True, glint_radius=rings.glint_radius,
                             face_radius=_face_radius(rings))
        if quick is None:
            return None
        center, radius = quick["center"], quick["radius"]
        # Read far enough to see the family even if this was an inner patch.
        span = FAMILY_SPAN * max(radius, rings.bore_radius)
        rings = find_rings(gray, center, span, noise, 0.7 * min_radius)
        if rings is None:
            return None
        if _radii_agree(rings.bore_radius, radius):
            return center, radius, rings
    return None


def _face_radius(rings):
    """Where the structure saw a tip face clipped at white end (its second
    ring, within the rings' ``FACE_SPAN``), px; else 0. Only a clipped face
    blooms past the edge measurement's ``RAY_LENGTH``; reading farther
    round an unclipped "face" lets a soft smudge on a bright heater block
    pass as a bore whose face ends at the frame's dark corner."""
    if rings.face_closed and len(rings.radii) > 1 and rings.face_level >= CLIPPED_LEVEL:
        return rings.radii[1]
    return 0.0


def _measure(gray, noise, center, radius, min_radius, hidden=None):
    """Structure, then the full measurement; a Detection or None.

    A bore that passes every test but the share of its rim that shows the
    edge (ooze or residue over it: at least ``HIDDEN_COMPLETENESS``, under
    ``MIN_COMPLETENESS``; its score, which counts that share, still at
    least ``MIN_SCORE``), inside a tip face (:func:`_looks_like_a_bore`),
    is appended to ``hidden``: a spot on its face must not pass for the
    nozzle (:func:`choose`).
    """
    family = _structure(gray, noise, center, radius, min_radius)
    if family is None:
        return None
    center, radius, rings = family
    m = measure_bore(gray, noise, center, radius, closed_hint=rings.face_closed,
                     glint_radius=rings.glint_radius, face_radius=_face_radius(rings))
    if m is None or not _radii_agree(m["radius"], rings.bore_radius):
        return None
    if m["closure"] < MIN_CLOSURE or m["rms"] > max(MAX_RMS_PX, MAX_RMS_FRACTION * m["radius"]):
        return None
    score = score_measurement(m) * (0.5 + 0.5 * m["in_view"])
    if m["completeness"] < MIN_COMPLETENESS:
        if hidden is not None and m["completeness"] >= HIDDEN_COMPLETENESS and \
                score >= MIN_SCORE and _looks_like_a_bore(rings, m["radius"]):
            hidden.append(Detection(center=m["center"], radius=m["radius"],
                                    score=round(score, 4), rms=round(m["rms"], 4),
                                    rings=(round(m["radius"], 2),) + tuple(rings.radii[1:])))
        return None
    if score < MIN_SCORE:
        return None
    # The rings as seen from the measured centre, for the preview and logs
    # (the structure's own where the centre hardly moved: the same rings).
    final = rings
    if math.hypot(m["center"][0] - center[0], m["center"][1] - center[1]) > SAME_RINGS_PX:
        final = find_rings(gray, m["center"], FAMILY_SPAN * m["radius"], noise) or rings
    if _thin_rim(gray, m, final):
        return None     # a thin bright rim: a chamfered hole, not a tip face
    face = final.radii[1] if len(final.radii) > 1 else 2.0 * m["radius"]
    width = round(edge_width(gray, m["center"], m["radius"], face), 2)
    if _grey_core(final, m["radius"], width):
        return None     # a grey disc in a bright ring: no hole
    return Detection(center=m["center"], radius=m["radius"], score=round(score, 4),
                     rings=(round(m["radius"], 2),) + tuple(final.radii[1:]),
                     rms=round(m["rms"], 4), edge_width=width)


def _looks_like_a_bore(rings, radius):
    """The ring structure round a centre is a bore's: a dark core (not a
    grey disc, ``MAX_CORE_FRACTION``) inside a closed bright face at least
    ``MIN_FACE_WIDTH`` radii wide."""
    return rings.face_closed and len(rings.radii) > 1 and \
        rings.radii[1] - radius >= MIN_FACE_WIDTH * radius and \
        rings.bore_level <= MAX_CORE_FRACTION * rings.face_level


def _thin_rim(gray, m, rings):
    """The bright ring round a measured bore is too thin for a tip face
    (``MIN_FACE_WIDTH``). Judged on the ring structure where its face ring
    lies whole in the frame; else, for a bore small enough to be seen whole
    but cut by the frame's edge, on the rays that show the face's fall (a
    white rim round a dark disc cut by the edge, a helmet's visor, is no
    nozzle). A bore too big for the frame (a microscope's view) is not
    judged: what the frame shows of its face may be glare or vignetting."""
    limit = MIN_FACE_WIDTH * m["radius"]
    if len(rings.radii) > 1 and rings.radii[1] < FACE_SEEN * _whole_ring_radius(gray, m["center"]):
        return rings.radii[1] - m["radius"] < limit
    if 2.0 * m["radius"] >= min(gray.shape):
        return False
    return m["face_width"] < limit      # False when no ray showed it (NaN)


def _grey_core(rings, radius, width):
    """A disc whose core is too bright for a bore: over
    ``MAX_CORE_FRACTION`` of its face's level where it is seen sharply,
    over ``MAX_BLURRED_CORE_FRACTION`` where blur may have filled it
    (radius under ``SHARP_RADII`` edge widths, or the edge width unknown).

    Not judged where the face is clipped at white (its true level is
    unknown and the fraction only an upper bound: x3 over-exposure lifted
    true cores to 0.53 of white).
    """
    if rings.face_level >= CLIPPED_LEVEL:
        return False
    sharp = width > 0 and radius >= SHARP_RADII * width
    limit = MAX_CORE_FRACTION if sharp else MAX_BLURRED_CORE_FRACTION
    return rings.bore_level > limit * rings.face_level


def _whole_ring_radius(gray, center):
    """Largest radius round ``center`` whose whole ring lies in the frame.

    Only there does the median profile's fall say where the face ends: past
    it the profile is the median of the rays still in view, and vignetting
    towards the corners shows there as a fall (a 0.45 H bore's face looked
    a thin rim).
    """
    height, width = gray.shape
    return min(center[0] + 0.5, center[1] + 0.5, width - 0.5 - center[0],
               height - 0.5 - center[1])


def _same(a, b):
    """Two detections of one bore."""
    return (math.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1])
            <= max(1.0, 0.2 * min(a.radius, b.radius))
            and abs(a.radius - b.radius) <= RADIUS_AGREEMENT * max(a.radius, b.radius))


def _kept(found, exclude, near=None):
    """The detections that may be the nozzle: not on a feature known to be
    static and, given a predicted position ``(u, v, reach)``, within reach."""
    return [d for d in found if not any(_near(p, d) for p in exclude) and (
        near is None or math.hypot(d.center[0] - near[0], d.center[1] - near[1]) <= near[2])]


def _not_where_predicted(found, near):
    """The refusal when bores were seen, none where the move put the nozzle."""
    nearest = min(found, key=lambda d: math.hypot(d.center[0] - near[0],
                                                  d.center[1] - near[1]))
    return BoreSearch(None, tuple(found), "not_near",
                      "no bore within %.0f px of (%.0f, %.0f), where the move "
                      "should have put the nozzle; the nearest, radius %.1f px, "
                      "is at (%.0f, %.0f)" % (near[2], near[0], near[1], nearest.radius,
                                              nearest.center[0], nearest.center[1]))


def _near(point, detection):
    return math.hypot(point[0] - detection.center[0],
                      point[1] - detection.center[1]) <= max(2.0, 0.5 * detection.radius)


def _candidate_points(gray, noise, min_radius, max_radius):
    """Candidate (u, v, r) lists, coarse search copies first, voting last."""
    height, width = gray.shape
    for scale in search_scales(gray.shape, min_radius):
        points = [(u, v, r) for u, v, r, _ in find_candidates(gray, min_radius, max_radius, scale)]
        # Islands the frame shows whole first (see _cut_by_frame).
        yield sorted(points, key=lambda p: _cut_by_frame(p, width, height))
    if max_radius >= VOTE_MIN_RADIUS:
        yield [(u, v, math.sqrt(r_lo * r_hi))
               for u, v, r_lo, r_hi, _ in vote_candidates(
                   gray, noise, max(min_radius, VOTE_MIN_RADIUS), max_radius)]


def _cut_by_frame(point, width, height):
    """The candidate ``(u, v, r)`` runs past the frame's edge. Such islands
    are mostly the hex or the body; they are looked at after the whole ones
    and, like any candidate beside a sure bore, only past a quick first look
    (a cut bore shows its edge there), as reading their rings out to
    ``FAMILY_SPAN`` radii is what costs."""
    u, v, r = point
    return min(u, v, width - 1 - u, height - 1 - v) < r


def find_bore(image, min_radius=2.0, max_radius=None, expected_radius=None,
              exclude=(), tolerance=1.0, near=None):
    """Find the nozzle bore in one frame, or say why not.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        BGR or grey frame.
    min_radius : float
        Smallest bore radius measured, px. Blur pulls the half-way edge of a
        tiny bore inwards (a 4 px bore defocused by 2 px measures ~2.5 px),
        so the default of 2 px finds bores of 3 px and more.
    max_radius : float, optional
        Largest, px; by default ``MAX_RADIUS_OF_HEIGHT`` of the frame height.
    expected_radius : float, optional
        The bore radius the machine expects (nozzle diameter / 2 / mm per
        px); bores more than ``SIZE_FACTOR`` off it are not the nozzle.
    exclude : sequence of (u, v)
        Centres of features known not to move with the nozzle (lens dirt,
        the camera housing); bores there are ignored.
    tolerance : float
        Two plausible bores farther apart than this (px) are refused.
    near : (u, v, reach), optional
        Where a known move should have put the nozzle (the calibrated camera
        model applied to the move), px: only bores within ``reach`` of it
        count, so a look-alike elsewhere in the view is neither taken nor a
        rival; bores seen only elsewhere are refused (``"not_near"``).

    Returns
    -------
    BoreSearch
    """
    gray = to_gray(image)
    if gray.size == 0 or min(gray.shape) < 8:
        return BoreSearch(None)
    if max_radius is None:
        max_radius = MAX_RADIUS_OF_HEIGHT * gray.shape[0]
    noise = estimate_noise(gray)
    search = (gray, noise, min_radius, max_radius, expected_radius, exclude, near)
    found, kept, passed_over, hidden = _look(*search, only_near=near is not None)
    if near is not None and not kept and passed_over:
        # Nothing where the move put the nozzle: look everywhere, so the
        # refusal can say where the bores are.
        found, kept, _, hidden = _look(*search, only_near=False)
    elsewhere = _kept(found, exclude) if near is not None and not kept else []
    if elsewhere:
        return _not_where_predicted(elsewhere, near)
    return choose(sorted(kept, key=lambda d: -d.score), expected_radius, tolerance,
                  hidden=_kept(hidden, exclude, near))


def _look(gray, noise, min_radius, max_radius, expected_radius, exclude, near,
          only_near):
    """Verified bores: ``(found, kept, passed_over, hidden)``, every one,
    those :func:`_kept` keeps, and bores too hidden to measure (see
    :func:`_measure`); with ``only_near``, candidates out of ``near``'s
    reach by more than ``NEAR_MARGIN`` of their radius are not measured
    (``passed_over`` says whether there were any): bores there could not
    be kept, and on a textured frame measuring them is most of the work."""
    height, width = gray.shape
    found, kept, passed_over, hidden = [], [], False, []
    for points in _candidate_points(gray, noise, min_radius, max_radius):
        for u, v, r in points:
            if only_near and math.hypot(u - near[0], v - near[1]) > \
                    near[2] + NEAR_MARGIN * r:
                passed_over = True
                continue
            if any(_near((u, v), d) and d.radius >= 0.7 * r for d in found):
                continue    # seen from this family already
            first_look = any(d.score >= EARLY_ACCEPT for d in kept) or \
                _cut_by_frame((u, v, r), width, height)
            if first_look and \
                    measure_bore(gray, noise, (u, v), r, quick=True, closed_hint=True) is None:
                # Beside a sure bore only a rival matters, and a rival bore
                # shows its edge at a first look (a cone or face candidate
                # leads to a family already seen).
                continue
            d = _measure(gray, noise, (u, v), r, min_radius, hidden)
            if d is None or not min_radius <= d.radius <= max_radius:
                continue
            if any(_same(d, other) for other in found):
                continue
            found.append(d)
            kept = _kept(found, exclude, near)
        # Only kept bores end the search early: a static feature must not,
        # as the nozzle may only show in a finer search copy.
        if any(d.score >= EARLY_ACCEPT for d in kept) and expected_radius is None:
            break
    return found, kept, passed_over, hidden


def _could_be_sized(detection, expected_radius):
    """A bore whose radius, give or take its edge width, is within
    ``SIZE_FACTOR`` of the expected one: defocus on a narrow tip face
    shrinks the measured radius (a 5 px bore blurred by 3 px measured
    2.8 px, refused though its centre was right), and the edge's own
    spread says by how much it may have."""
    largest = detection.radius + detection.edge_width
    smallest = detection.radius - detection.edge_width
    return largest * SIZE_FACTOR >= expected_radius and \
        smallest <= SIZE_FACTOR * expected_radius


def _out_of_focus(other, best):
    """``other``'s edge is far wider than ``best``'s (see FOCUS_RATIO); an
    edge width of 0 (not measured) decides nothing."""
    return best.edge_width > 0 and \
        other.edge_width > FOCUS_RATIO * best.edge_width + FOCUS_SLACK_PX


def _on_face(mark, bore):
    """``mark`` lies on ``bore``'s tip face (:func:`_within_face`) and is
    no sharper a thing than the bore.

    The face is solid metal round the bore, so a dark spot on it (burnt
    filament, a pit) is no second nozzle. Not when the bore is far less
    sharp than the spot (``FOCUS_RATIO``): a hole in the heater block,
    millimetres behind the tip and blurred, can seem to hold a real nozzle
    on its "face"; that stays a refusal (see :func:`choose`).
    """
    return _within_face(mark, bore) and not _out_of_focus(bore, mark)


def _within_face(mark, bore):
    """``mark``'s centre lies between ``bore``'s edge and its face's outer
    edge, and it is the smaller of the two.

    The face reaches the face's outer ring where the structure saw one,
    and at least ``MIN_FACE_WIDTH`` radii past the bore in any case (no
    nozzle's wall is thinner, and a bore on a thinner rim is refused by
    ``_thin_rim``): a glittering face, as a zoomed camera sees it, breaks
    into rings of its own or none.
    """
    if mark.radius >= bore.radius:
        return False
    face_end = (1.0 + MIN_FACE_WIDTH) * bore.radius
    if len(bore.rings) > 1:
        face_end = max(face_end, bore.rings[1])
    apart = math.hypot(mark.center[0] - bore.center[0], mark.center[1] - bore.center[1])
    return bore.radius < apart <= face_end


def _rival(other, best, apart, tolerance):
    """``other``, ``apart`` px from ``best``, is as plausible a bore and
    elsewhere.

    A spot on the best bore's face is none; nor is a far blurrier thing
    (out of the focal plane) unless ``best`` lies on its face: then either
    ``best`` is a mark on a blurred nozzle's face or a sharp nozzle seen in
    front of a blurred hole, and the two cannot be told apart (a zoomed
    camera's ragged 245 px bore measures a 31 px wide edge, and a 7 px
    speck on its glittering face once scored above it and was taken).
    """
    if other.score < RIVAL_SCORE * best.score or apart <= tolerance or _on_face(other, best):
        return False
    return not _out_of_focus(other, best) or _within_face(best, other)


def choose(found, expected_radius=None, tolerance=1.0, hidden=()):
    """The one bore among verified ones, or a refusal.

    Parameters
    ----------
    found : list of Detection
        Verified bores, best first.
    expected_radius : float, optional
    tolerance : float
    hidden : sequence of Detection
        Bores whose structure was seen but whose edge was too hidden to
        measure: a smaller bore on one's tip face is refused, as it may be
        a spot on the nozzle's face (burnt residue, a pit) while the
        nozzle's own rim is under ooze.

    Returns
    -------
    BoreSearch
    """
    candidates = tuple(found)
    if expected_radius:
        sized = [d for d in found if _could_be_sized(d, expected_radius)]
        if not sized and found:
            d = found[0]
            return BoreSearch(None, candidates, "size_mismatch",
                              "found a circle of %.1f px radius but expected "
                              "a bore of about %.1f px" % (d.radius, expected_radius))
        found = sized
    if not found:
        return BoreSearch(None, candidates)
    best = found[0]
    for bore in hidden:
        if _within_face(best, bore) and not any(_same(bore, d) for d in found) and \
                (not expected_radius or _could_be_sized(bore, expected_radius)):
            return BoreSearch(None, candidates, "ambiguous",
                              "a dark spot (radius %.1f px at %.0f, %.0f) lies on "
                              "the tip face of a larger bore (radius %.1f px at "
                              "%.0f, %.0f) whose edge is too hidden to measure"
                              % (best.radius, best.center[0], best.center[1],
                                 bore.radius, bore.center[0], bore.center[1]))
    for other in found[1:]:
        apart = math.hypot(best.center[0] - other.center[0],
                           best.center[1] - other.center[1])
        if _rival(other, best, apart, tolerance):
            return BoreSearch(None, candidates, "ambiguous",
                              "two circles %.1f px apart look equally like the "
                              "bore (radius %.1f px at %.0f, %.0f and %.1f px at "
                              "%.0f, %.0f)" % (apart, best.radius, best.center[0],
                                               best.center[1], other.radius,
                                               other.center[0], other.center[1]))
    return BoreSearch(best, candidates)


def smaller_bore(image, min_radius):
    """The bore a frame shows below ``min_radius`` (down to
    ``SMALLEST_BORE``), or None.

    For a frame in which no bore of ``min_radius`` or more was found: a
    camera far from the nozzle or of low resolution shows a bore of 2-3
    px, and the user should hear that raising the range would find it.
    The frame gave no larger bore, so the largest radius searched here is
    ``min_radius``.
    """
    if min_radius <= SMALLEST_BORE:
        return None
    return find_bore(image, SMALLEST_BORE, min_radius).detection


def detect_nozzle(image, min_radius=2.0, max_radius=None, **kwargs):
    """The bore of :func:`find_bore`, or None (no bore, or refused)."""
    return find_bore(image, min_radius, max_radius, **kwargs).detection
