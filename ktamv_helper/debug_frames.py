"""Keep the frames of failed detections so the user can see what went wrong.

Each failure writes two JPEGs whose names say when and why::

    20261125-213501.123-nozzle_not_found-raw.jpg
    20261125-213501.123-nozzle_not_found-annotated.jpg

Only the newest ``keep`` failures stay; older files *of this naming scheme*
are deleted, anything else in the folder is never touched. Disk trouble
(full card, read-only folder) is logged and never raised: a failed detection
must still report its own error, not a secondary one.
"""

import datetime
import logging
import os
import re

import cv2

from ktamv_helper.annotate import annotate

log = logging.getLogger(__name__)

RAW_JPEG_QUALITY = 95
ANNOTATED_JPEG_QUALITY = 90

# stamp (local time, ms), optional collision counter, reason, kind.
_NAME = re.compile(r"^(?P<stamp>\d{8}-\d{6}\.\d{3})(?:_(?P<count>\d+))?"
                   r"-(?P<reason>[a-z0-9_]+)-(?P<kind>raw|annotated)\.jpg$")


def failure_basename(when, reason, count=0):
    """Return the file name stem for a failure, e.g. ``20261125-213501.123-nozzle_not_found``.

    Parameters
    ----------
    when : datetime.datetime
        Local time of the failure.
    reason : str
        Why; reduced to ``[a-z0-9_]`` (e.g. an error code).
    count : int
        Disambiguates two failures in the same millisecond (0 = none).
    """
    stamp = when.strftime("%Y%m%d-%H%M%S") + ".%03d" % (when.microsecond // 1000)
    if count:
        stamp += "_%d" % count
    return "%s-%s" % (stamp, safe_reason(reason))


def safe_reason(reason):
    """Reduce ``reason`` to lower-case letters, digits and underscores."""
    text = re.sub(r"[^a-z0-9]+", "_", str(reason).lower()).strip("_")
    return text[:60] or "failure"


def save_failure(folder, keep, image, reason, detection=None, now=None):
    """Write the raw and annotated frame of a failed detection, prune old ones.

    Parameters
    ----------
    folder : str
        Debug folder; created when missing.
    keep : int
        Number of newest failures (file pairs) to keep; at least 1.
    image : ndarray of uint8, shape (H, W, 3) or (H, W)
        The frame the detector failed on.
    reason : str
        Why it failed, e.g. ``"nozzle_not_found"``; goes into the file name.
    detection : object, optional
        What the detector did find (drawn on the annotated frame).
    now : datetime.datetime, optional
        Time stamp for the name (default: now, local time).

    Returns
    -------
    list of str
        Paths written (raw first); fewer or none when writing failed.
    """
    saved = []
    try:
        os.makedirs(folder, exist_ok=True)
        when = now or datetime.datetime.now()
        base = _free_basename(folder, when, reason)
        try:
            annotated = annotate(image, detection, status_lines=(
                "kTAMV: %s" % str(reason).replace("_", " "),
                when.strftime("%Y-%m-%d %H:%M:%S")))
        except Exception:  # a bad frame must not cost us the raw one
            log.exception("debug frames: could not annotate the frame")
            annotated = None
        for kind, picture, quality in (
                ("raw", image, RAW_JPEG_QUALITY),
                ("annotated", annotated, ANNOTATED_JPEG_QUALITY)):
            if picture is None:
                continue
            path = os.path.join(folder, "%s-%s.jpg" % (base, kind))
            if _write_jpeg(path, picture, quality):
                saved.append(path)
    except Exception as exc:
        log.warning("debug frames: could not save a frame in %s: %s",
                    folder, exc)
    try:
        prune(folder, keep)
    except Exception as exc:
        log.warning("debug frames: could not prune %s: %s", folder, exc)
    return saved


def prune(folder, keep):
    """Delete all but the newest ``keep`` failures of this naming scheme.

    Returns the paths deleted. Files whose names do not match the scheme
    (and folders) are never touched.
    """
    keep = max(1, int(keep))
    groups = {}
    for entry in os.scandir(folder):
        match = _NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        key = (match.group("stamp"), int(match.group("count") or 0),
               match.group("reason"))
        groups.setdefault(key, []).append(entry.path)
    deleted = []
    for key in sorted(groups)[:-keep]:
        for path in groups[key]:
            try:
                os.remove(path)
                deleted.append(path)
            except OSError as exc:
                log.warning("debug frames: could not delete %s: %s", path, exc)
    return deleted


def _free_basename(folder, when, reason):
    """A name stem no file in ``folder`` uses yet (two failures in 1 ms)."""
    count = 0
    while True:
        base = failure_basename(when, reason, count)
        if not any(os.path.exists(os.path.join(folder, "%s-%s.jpg" % (base, k)))
                   for k in ("raw", "annotated")):
            return base
        count += 1


def _write_jpeg(path, image, quality):
    """Encode and write atomically (temp file + rename); False on failure."""
    temporary = path + ".part"
    try:
        ok, buffer = cv2.imencode(".jpg", image,
                                  [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("OpenCV could not encode the frame as JPEG")
        with open(temporary, "wb") as stream:
            stream.write(buffer.tobytes())
        os.replace(temporary, path)
        return True
    except Exception as exc:
        log.warning("debug frames: could not write %s: %s", path, exc)
        try:
            os.remove(temporary)
        except OSError:
            pass
        return False
