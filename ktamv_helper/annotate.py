"""Draw what the detector sees: crosshair, bore circle, tolerance, status text.

The drawing scales with the frame so the overlay reads the same on a 320x240
webcam and on a 1920x1080 one. Positions follow the OpenCV pixel convention of
``docs/protocol.md`` (the centre of pixel (0, 0) is (0.0, 0.0)) and are drawn
with sub-pixel precision through OpenCV's fixed-point ``shift`` argument, so
a circle drawn at u = 320.4 is not rounded to 320.
"""

import functools
import math

import cv2
import numpy as np

# BGR colours, saturated so they stand out against a grey/metal nozzle.
CROSSHAIR_COLOR = (0, 255, 255)        # yellow
RING_COLOR = (200, 160, 0)             # blue-grey: rings round the bore
TOLERANCE_COLOR = (255, 255, 0)        # cyan
DETECTION_COLOR = (0, 255, 0)          # green: bore found (inside tolerance)
OFF_TARGET_COLOR = (0, 140, 255)       # orange: bore found outside tolerance
TEXT_COLOR = (255, 255, 255)

# Fixed-point bits for sub-pixel drawing: coordinates are multiplied by 2**4.
_SHIFT = 4
_ONE = 1 << _SHIFT
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def image_center(image):
    """Return the image centre ``((W-1)/2, (H-1)/2)`` in OpenCV pixels."""
    height, width = image.shape[:2]
    return ((width - 1) / 2.0, (height - 1) / 2.0)


def line_thickness(image):
    """Line width in pixels for a frame: 1 px below 450 lines, then wider.

    Two pixels at 480 lines keep thin coloured lines visible after the
    JPEG chroma subsampling of the stream.
    """
    return max(1, int(round(min(image.shape[:2]) / 300.0)))


def annotate(image, detection=None, tolerance_px=None, status_lines=()):
    """Return a copy of ``image`` with the alignment overlay drawn on it.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        The camera frame (BGR or grey). It is not modified.
    detection : object, optional
        The bore found in the frame, with ``center`` ((u, v) in pixels),
        ``radius`` (pixels) and ``score`` (0-1) as attributes or mapping keys,
        e.g. :class:`ktamv_helper.detection.Detection`. Non-finite values are
        ignored rather than drawn.
    tolerance_px : float, optional
        Radius of the target circle drawn around the image centre.
    status_lines : sequence of str
        Text shown top-left, one line each (state, last result, scale, age).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        The annotated BGR image.
    """
    canvas = _as_bgr(image)
    thickness = line_thickness(canvas)
    center = image_center(canvas)
    height, width = canvas.shape[:2]

    draw_crosshair(canvas, center, thickness)

    tolerance = _finite_or_none(tolerance_px)
    if tolerance is not None and tolerance > 0:
        _draw_circle(canvas, center, tolerance, TOLERANCE_COLOR, thickness)

    lines = [str(line) for line in status_lines]
    found = _detection_values(detection)
    if found is not None:
        (u, v), radius, score = found
        distance = math.hypot(u - center[0], v - center[1])
        on_target = tolerance is None or distance <= tolerance
        color = DETECTION_COLOR if on_target else OFF_TARGET_COLOR
        # The outer rings the detector saw round the bore (tip face, cone),
        # thin, so a wrong choice among them shows at a glance.
        for ring in (_field(detection, "rings") or ())[1:]:
            ring = _finite_or_none(ring)
            if ring and ring > 0:
                _draw_circle(canvas, (u, v), ring, RING_COLOR, 1)
        if radius is not None and radius > 0:
            _draw_circle(canvas, (u, v), radius, color, thickness)
        _draw_center_mark(canvas, (u, v), 4 * thickness + 2, color, thickness)
        lines.append(_describe_detection(u, v, radius, score, distance))
    draw_text_block(canvas, lines)
    return canvas


def draw_crosshair(canvas, center, thickness):
    """Crosshair through ``center`` (in place): bold lines from the edges,
    1 px hairlines near the centre so the bore stays visible under them."""
    height, width = canvas.shape[:2]
    u, v = center
    gap = 0.1 * min(width, height)
    for start, end in (((u, 0), (u, v - gap)), ((u, v + gap), (u, height - 1)),
                       ((0, v), (u - gap, v)), ((u + gap, v), (width - 1, v))):
        _draw_line(canvas, start, end, CROSSHAIR_COLOR, thickness)
    _draw_line(canvas, (u, v - gap), (u, v + gap), CROSSHAIR_COLOR, 1)
    _draw_line(canvas, (u - gap, v), (u + gap, v), CROSSHAIR_COLOR, 1)
    return canvas


def placeholder_image(lines, size=(640, 480)):
    """Return a dark BGR frame with ``lines`` of text, for "no image yet".

    Parameters
    ----------
    lines : sequence of str
        Text to show, e.g. ``["kTAMV preview", "waiting for camera"]``.
    size : (int, int)
        ``(width, height)`` of the frame.
    """
    width, height = size
    canvas = np.full((height, width, 3), 48, dtype=np.uint8)
    draw_text_block(canvas, list(lines))
    return canvas


def draw_text_block(canvas, lines):
    """Draw ``lines`` top-left on a darkened box, sized to the frame (in place).

    Capitals are 1/40 of the frame height (at least 8 px); a line too wide
    for the frame wraps at spaces, and only a single word too wide shrinks
    the font. Text OpenCV cannot draw (non-ASCII) becomes ``?``.
    """
    lines = [_ascii(line) for line in lines if str(line)]
    if not lines:
        return canvas
    height, width = canvas.shape[:2]
    cap_height = _cap_height()
    scale = max(height / 40.0, 8.0) / cap_height
    thickness = max(1, int(round(scale * 1.4)))
    margin = max(3, int(round(height / 80.0)))
    room = width - 2 * margin

    def text_width(text):
        return cv2.getTextSize(text, _FONT, scale, thickness)[0][0]

    lines = [part for line in lines for part in _wrap(line, room, text_width)]
    widest = max(text_width(line) for line in lines)
    if widest > room:
        scale = max(scale * room / float(widest), 0.25)
        thickness = max(1, int(round(scale * 1.4)))
    line_height = int(math.ceil(cap_height * scale * 1.8))

    box_w = max(text_width(line) for line in lines) + 2 * margin
    box_h = line_height * len(lines) + margin
    roi = canvas[0:min(box_h, height), 0:min(box_w, width)]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)
    for index, line in enumerate(lines):
        baseline_y = margin + line_height * index + int(cap_height * scale)
        cv2.putText(canvas, line, (margin, baseline_y), _FONT, scale,
                    TEXT_COLOR, thickness, cv2.LINE_AA)
    return canvas


@functools.lru_cache(maxsize=1)
def _cap_height():
    """Drawn height of a capital at font scale 1, measured once.

    ``cv2.getTextSize`` reports the font's line box, whose ratio to the
    drawn glyphs differs between OpenCV versions.
    """
    probe = np.zeros((120, 120), np.uint8)
    cv2.putText(probe, "H", (10, 100), _FONT, 1.0, 255, 1, cv2.LINE_8)
    rows = np.nonzero(probe.any(axis=1))[0]
    return float(rows.max() - rows.min() + 1) if rows.size else 22.0


def _wrap(line, room, text_width):
    """Split ``line`` at spaces into pieces at most ``room`` pixels wide."""
    if text_width(line) <= room:
        return [line]
    pieces, current = [], ""
    for word in line.split():
        candidate = word if not current else current + " " + word
        if current and text_width(candidate) > room:
            pieces.append(current)
            current = "  " + word  # indent continuation lines
        else:
            current = candidate
    pieces.append(current)
    return pieces


def _as_bgr(image):
    array = np.asarray(image)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    if array.ndim == 3 and array.shape[2] == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2BGR)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError("annotate needs an (H, W) or (H, W, 3) image, got "
                         "shape %r" % (array.shape,))
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array.copy()


def _finite_or_none(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _field(detection, name):
    if isinstance(detection, dict):
        return detection.get(name)
    return getattr(detection, name, None)


def _detection_values(detection):
    """``((u, v), radius, score)`` from a detection, or None if unusable."""
    if detection is None:
        return None
    center = _field(detection, "center")
    try:
        u, v = (float(c) for c in center)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(u) and math.isfinite(v)):
        return None
    return (u, v), _finite_or_none(_field(detection, "radius")), \
        _finite_or_none(_field(detection, "score"))


def _describe_detection(u, v, radius, score, distance):
    text = "nozzle %.2f, %.2f px" % (u, v)
    if radius is not None:
        text += "  r %.1f" % radius
    if score is not None:
        text += "  score %.2f" % score
    return text + "  off centre %.2f px" % distance


def _fixed(point):
    return (int(round(point[0] * _ONE)), int(round(point[1] * _ONE)))


def _on_canvas(canvas, point, margin):
    # cv2 fixed-point maths overflows on absurd coordinates; such a point is
    # far outside the frame anyway.
    height, width = canvas.shape[:2]
    limit = 4 * max(width, height) + margin
    return abs(point[0]) < limit and abs(point[1]) < limit


def _draw_line(canvas, start, end, color, thickness):
    cv2.line(canvas, _fixed(start), _fixed(end), color, thickness,
             cv2.LINE_AA, _SHIFT)


def _draw_circle(canvas, center, radius, color, thickness):
    if not _on_canvas(canvas, center, radius) or radius > 8 * max(canvas.shape):
        return
    cv2.circle(canvas, _fixed(center), int(round(radius * _ONE)), color,
               thickness, cv2.LINE_AA, _SHIFT)


def _draw_center_mark(canvas, center, size, color, thickness):
    """A small diagonal cross, so it is not mistaken for the crosshair."""
    if not _on_canvas(canvas, center, size):
        return
    u, v = center
    half = size / 2.0
    _draw_line(canvas, (u - half, v - half), (u + half, v + half), color,
               thickness)
    _draw_line(canvas, (u - half, v + half), (u + half, v - half), color,
               thickness)


def _ascii(text):
    return str(text).encode("ascii", "replace").decode("ascii")
