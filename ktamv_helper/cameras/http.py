"""HTTP cameras: snapshot URLs and MJPEG streams (standard library only).

``open_http_camera`` sends one GET and decides by the response's content
type, not by the URL:

* ``multipart/x-mixed-replace`` → :class:`MjpegCamera`: a reader thread keeps
  the connection open, splits it into parts, stamps each part with
  ``time.monotonic()`` when its last byte arrived and keeps the newest one;
  JPEG decoding happens only when a frame is asked for, so an idle helper
  costs almost nothing. Broken connections are retried with backoff.
* ``image/*`` → :class:`SnapshotCamera`: one GET per frame.

Every failure becomes a :class:`~ktamv_helper.errors.HelperError` with its
cause (``camera_unreachable``, ``camera_timeout``, ``camera_http_error``,
``camera_bad_frame``); nothing here blocks longer than its timeout.
"""

import base64
import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from ktamv_helper.cameras import as_bgr, check_frame_size
from ktamv_helper.cameras.base import CameraSource, Frame
from ktamv_helper.errors import HelperError
from ktamv_helper.freshness import camera_stamp_to_monotonic

log = logging.getLogger("ktamv_helper.cameras.http")

# A JPEG/PNG larger than this is not a nozzle camera's frame.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_HEADER_LINES = 64
MAX_LINE = 64 * 1024
# Reconnect backoff of the MJPEG reader, seconds.
MIN_BACKOFF = 0.25
MAX_BACKOFF = 5.0

# A LAN camera is never reached through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_HEADERS = {"User-Agent": "ktamv-helper",
            "Accept": "multipart/x-mixed-replace, image/*;q=0.9, */*;q=0.1"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (all but DHT C4, JPG C8 and DAC CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# ---------------------------------------------------------------- images

def image_header_size(data):
    """``(width, height)`` from a JPEG or PNG header, or ``None``.

    Reading the header first lets an absurd size be refused before OpenCV
    allocates memory for it.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return (int.from_bytes(data[16:20], "big"),
                int.from_bytes(data[20:24], "big"))
    if data[:2] != b"\xff\xd8":
        return None
    index = 2
    while index + 4 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:              # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            index += 2
            continue
        if marker in (0xD9, 0xDA):      # end of image / scan before a frame
            return None
        length = int.from_bytes(data[index + 2:index + 4], "big")
        if marker in _SOF_MARKERS:
            if index + 9 > len(data):
                return None
            height = int.from_bytes(data[index + 5:index + 7], "big")
            width = int.from_bytes(data[index + 7:index + 9], "big")
            return (width, height)
        index += 2 + length
    return None


def _looks_like_text(data):
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"<"))


def decode_image(data, url):
    """Decode a JPEG/PNG body into a BGR frame, refusing anything unusable.

    Raises
    ------
    HelperError
        ``camera_bad_frame`` for an empty body, a web page, a truncated or
        corrupt JPEG, or a zero-size or absurd frame.
    """
    if not data:
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent an empty image (0 bytes): "
                          "the camera may still be starting, or it is "
                          "overloaded." % url)
    if _looks_like_text(data):
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent a web page or text instead "
                          "of an image: check nozzle_cam_url (use the "
                          "snapshot or stream address)." % url)
    size = image_header_size(data)
    if size is not None:
        check_frame_size(size[0], size[1], url)
    if data[:2] == b"\xff\xd8" and data.rstrip(b"\r\n\x00 ")[-2:] != b"\xff\xd9":
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent a truncated JPEG (%d bytes, "
                          "no end marker): the connection dropped mid-frame "
                          "or the camera is overloaded." % (url, len(data)))
    import cv2
    import numpy as np
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HelperError("camera_bad_frame",
                          "The camera at %s sent %d bytes that are not a "
                          "decodable image (corrupt JPEG?)." % (url, len(data)))
    return as_bgr(image, url)


# ---------------------------------------------------------------- requests

def _connection_error(url, reason, timeout):
    """Map a socket-level failure to the matching ``camera_*`` error."""
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return HelperError("camera_timeout",
                           "The camera at %s did not answer within %.1f s: "
                           "check that it is running and not overloaded, or "
                           "raise camera_timeout." % (url, timeout))
    if isinstance(reason, ConnectionRefusedError):
        return HelperError("camera_unreachable",
                           "Nothing answers at %s: is crowsnest/ustreamer "
                           "running? Check nozzle_cam_url." % url)
    if isinstance(reason, socket.gaierror):
        return HelperError("camera_unreachable",
                           "The camera's host name in %s cannot be resolved "
                           "(%s): check nozzle_cam_url." % (url, reason))
    if isinstance(reason, ssl.SSLError):
        return HelperError("camera_unreachable",
                           "The TLS connection to %s failed (%s): try the "
                           "camera's http:// address." % (url, reason))
    if isinstance(reason, http.client.RemoteDisconnected):
        return HelperError("camera_unreachable",
                           "The camera at %s closed the connection without "
                           "answering: is it serving another client only?"
                           % url)
    if isinstance(reason, http.client.HTTPException):
        return HelperError("camera_bad_frame",
                           "The camera at %s did not answer with valid HTTP "
                           "(%s: %s)." % (url, type(reason).__name__, reason))
    return HelperError("camera_unreachable",
                       "The camera at %s cannot be reached (%s): check "
                       "nozzle_cam_url and the network." % (url, reason))


def split_credentials(url):
    """``(url_without_credentials, authorization_header_or_None)``.

    ``http://user:password@host/…`` works as cameras such as mjpg-streamer
    expect (HTTP basic auth), and the password never appears in a message.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    if parts.port is not None:
        host += ":%d" % parts.port
    clean = urllib.parse.urlunsplit((parts.scheme, host, parts.path,
                                     parts.query, parts.fragment))
    secret = "%s:%s" % (urllib.parse.unquote(parts.username),
                        urllib.parse.unquote(parts.password or ""))
    return clean, "Basic " + base64.b64encode(secret.encode()).decode("ascii")


def http_get(url, timeout, authorization=None):
    """Send a GET; return the open response or raise a ``camera_*`` error."""
    headers = dict(_HEADERS)
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, headers=headers)
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 401:
            hint = ("the camera wants a user name and password: put them in "
                    "nozzle_cam_url as http://user:password@host/…"
                    if not authorization else
                    "check the user name and password in nozzle_cam_url")
        else:
            hint = "check the path in nozzle_cam_url"
        raise HelperError("camera_http_error",
                          "The camera at %s answered HTTP %d (%s): %s."
                          % (url, exc.code, exc.reason, hint),
                          {"status": exc.code})
    except urllib.error.URLError as exc:
        raise _connection_error(url, exc.reason, timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _connection_error(url, exc, timeout)


def read_body(response, url, deadline, limit=MAX_BODY_BYTES):
    """Read a whole response body, bounded in size and by ``deadline``."""
    chunks, total = [], 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise HelperError("camera_timeout",
                                  "The image from %s did not finish arriving "
                                  "in time (%d bytes so far)." % (url, total))
            data = response.read1(64 * 1024)
            if not data:
                missing = getattr(response, "length", None)
                if missing:
                    # read1 reports a short body as a plain end of data.
                    raise http.client.IncompleteRead(b"", missing)
                break
            total += len(data)
            if total > limit:
                raise HelperError("camera_bad_frame",
                                  "The camera at %s sent more than %d MiB for "
                                  "one image." % (url, limit // (1024 * 1024)))
            chunks.append(data)
    except http.client.IncompleteRead as exc:
        raise HelperError("camera_bad_frame",
                          "The image from %s was cut off (%d bytes of %s): the "
                          "connection dropped mid-frame."
                          % (url, total + len(exc.partial),
                             exc.expected and total + len(exc.partial)
                             + exc.expected))
    except (OSError, http.client.HTTPException) as exc:
        raise _connection_error(url, exc, max(0.0, deadline - time.monotonic()))
    return b"".join(chunks)


def _content_kind(response, url):
    """``("stream", boundary)``, ``("image", None)``, or raise bad frame."""
    headers = response.headers
    content_type = headers.get_content_type()
    if content_type.startswith("multipart/"):
        return "stream", headers.get_param("boundary")
    if content_type.startswith("image/"):
        return "image", None
    # Some servers label frames generically: look at the first bytes.
    try:
        head = response.peek(64)[:64]
    except (OSError, http.client.HTTPException, ValueError):
        head = b""
    if head.startswith((b"\xff\xd8", _PNG_SIGNATURE)):
        return "image", None
    if head.lstrip().startswith(b"--"):
        return "stream", None
    if content_type.startswith("text/") or _looks_like_text(head):
        what = "a web page (%s)" % content_type
    else:
        what = "%s data" % content_type
    raise HelperError("camera_bad_frame",
                      "The camera URL %s answered with %s, not an image or "
                      "an MJPEG stream: use the snapshot (…?action=snapshot) "
                      "or stream (…?action=stream) address." % (url, what),
                      {"content_type": content_type})


def open_http_camera(url, timeout=5.0):
    """Probe ``url`` once and return the matching camera source."""
    url, authorization = split_credentials(url)
    response = http_get(url, timeout, authorization)
    try:
        kind, boundary = _content_kind(response, url)
    except HelperError:
        response.close()
        raise
    if kind == "stream":
        return MjpegCamera(url, timeout, response, boundary, authorization)
    try:
        body = read_body(response, url, time.monotonic() + timeout)
    finally:
        response.close()
    decode_image(body, url)
    return SnapshotCamera(url, timeout, authorization)


def _wait_until(when, deadline, url, timeout):
    """Sleep until ``when`` (a frame must start after it), within ``deadline``."""
    if when is None:
        return
    if when > deadline:
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise HelperError("camera_timeout",
                          "No frame from %s can be newer than the requested "
                          "time within %.1f s." % (url, timeout))
    while time.monotonic() < when:
        time.sleep(max(0.0, when - time.monotonic()))


class SnapshotCamera(CameraSource):
    """One GET per frame; the frame is stamped when its body has arrived."""

    def __init__(self, url, timeout=5.0, authorization=None):
        self.url = url
        self.timeout = timeout
        self._authorization = authorization
        self._closed = False

    def get_frame(self, not_before=None, timeout=5.0):
        deadline = time.monotonic() + timeout
        _wait_until(not_before, deadline, self.url, timeout)
        if self._closed:
            raise HelperError("camera_unreachable",
                              "The camera %s was closed." % self.url)
        remaining = max(0.05, deadline - time.monotonic())
        response = http_get(self.url, remaining, self._authorization)
        try:
            kind, _ = _content_kind(response, self.url)
            if kind != "image":
                raise HelperError("camera_bad_frame",
                                  "The snapshot URL %s now serves a stream, "
                                  "not single images." % self.url)
            body = read_body(response, self.url, deadline)
        finally:
            response.close()
        stamp = time.monotonic()
        return Frame(decode_image(body, self.url), stamp)

    def close(self):
        self._closed = True


# ---------------------------------------------------------------- MJPEG

def _readline(stream):
    line = stream.readline(MAX_LINE)
    return line


def _boundary_markers(boundary):
    boundary = boundary.strip().strip('"')
    raw = boundary.encode("latin-1")
    markers = {b"--" + raw, raw}
    if raw.startswith(b"--"):
        markers.add(raw[2:])
    return markers


def iter_mjpeg_parts(stream, boundary=None, clock=time.monotonic,
                     max_part=MAX_BODY_BYTES):
    """Yield ``(timestamp, body, camera_stamp)`` for each part of a stream.

    Parameters
    ----------
    stream : file-like
        Binary, with ``readline(limit)`` and ``read(n)``.
    boundary : str or None
        The ``boundary`` parameter of the content type; ``None`` takes the
        first ``--…`` line of the body as the boundary.
    clock : callable
        Stamps a part when its last byte has been read.
    max_part : int
        Longest part accepted.

    ``camera_stamp`` is the part's ``X-Timestamp`` header (seconds, as
    camera-streamer and ustreamer send it) or ``None``. Ends at end of
    stream or the closing boundary. A part's own ``Content-Length`` is
    honoured when present; otherwise the part runs to the next boundary.

    Raises
    ------
    HelperError
        ``camera_bad_frame`` when the stream is not multipart as announced.
    """
    markers = _read_preamble(stream, boundary)
    if markers is None:
        return
    closing = {m + b"--" for m in markers}
    while True:
        headers = _read_part_headers(stream, closing)
        if headers is None:
            return
        length = headers.get(b"content-length")
        sized = length is not None and length.isdigit()
        if sized:
            body = _read_sized_part(stream, int(length), max_part)
            end = False
        else:
            body, end = _read_delimited_part(stream, max_part, markers,
                                             closing)
        if body is None:
            return
        # Handed on at once: the next boundary may come only much later.
        yield clock(), body, _camera_stamp(headers)
        if end or (sized and _skip_to_boundary(stream, markers, closing)):
            return


def _camera_stamp(headers):
    value = headers.get(b"x-timestamp")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _read_preamble(stream, boundary):
    """Read up to the first boundary line; its markers, or None at the end."""
    markers = _boundary_markers(boundary) if boundary else None
    for _ in range(MAX_HEADER_LINES):
        line = _readline(stream)
        if not line:
            return None
        stripped = line.strip()
        if markers is None and stripped.startswith(b"--"):
            markers = {stripped, stripped[2:]}
        if markers and stripped in markers:
            return markers
    raise HelperError("camera_bad_frame",
                      "The stream announced multipart data but no boundary "
                      "line arrived.")


def _read_part_headers(stream, closing):
    """A part's headers (lower-case names), or None at the stream's end."""
    headers = {}
    for _ in range(MAX_HEADER_LINES):
        line = _readline(stream)
        if not line:
            return None
        stripped = line.strip()
        if not stripped:
            if headers:
                return headers
            continue        # tolerate blank lines before the headers
        if stripped in closing:
            return None
        name, sep, value = stripped.partition(b":")
        if not sep:
            raise HelperError("camera_bad_frame",
                              "A part of the MJPEG stream has a malformed "
                              "header line %r." % stripped[:60])
        headers[name.strip().lower()] = value.strip()
    raise HelperError("camera_bad_frame", "A part of the MJPEG stream has "
                      "too many header lines.")


def _read_sized_part(stream, size, max_part):
    """The body of a part with a Content-Length, or None if cut short."""
    if size > max_part:
        raise HelperError("camera_bad_frame",
                          "A part of the MJPEG stream claims %d bytes, more "
                          "than a camera frame can be." % size)
    body = stream.read(size)
    return body if len(body) == size else None


def _skip_to_boundary(stream, markers, closing):
    """Skip the CRLF (and anything else) before the next boundary; True
    when the stream ended instead."""
    while True:
        line = _readline(stream)
        if not line:
            return True
        stripped = line.strip()
        if stripped in closing:
            return True
        if stripped in markers:
            return False


def _read_delimited_part(stream, max_part, markers, closing):
    """``(body, stream_ended)`` of a part that runs to the next boundary."""
    pieces, total = [], 0
    while True:
        line = _readline(stream)
        if not line:
            return None, True
        stripped = line.strip()
        if stripped in markers or stripped in closing:
            break
        total += len(line)
        if total > max_part:
            raise HelperError("camera_bad_frame",
                              "A part of the MJPEG stream is longer than %d "
                              "bytes without a boundary." % max_part)
        pieces.append(line)
    body = b"".join(pieces)
    if body.endswith(b"\r\n"):
        body = body[:-2]
    elif body.endswith(b"\n"):
        body = body[:-1]
    return body, stripped in closing


class _Part:
    __slots__ = ("seq", "timestamp", "data", "captured")

    def __init__(self, seq, timestamp, data, captured=None):
        self.seq = seq
        self.timestamp = timestamp
        self.data = data
        self.captured = captured


def _shutdown_response(response, close=True):
    """Wake a reader blocked on ``response``'s socket, then close it.

    Another thread only shuts the socket down (``close=False``): closing the
    response under the reader's feet races with its own bookkeeping.
    """
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None),
                   "_sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    if close:
        try:
            response.close()
        except Exception:
            pass


class MjpegCamera(CameraSource):
    """An MJPEG stream kept open by a reader thread.

    Parameters
    ----------
    url : str
    timeout : float
        Socket timeout: a stream silent this long is reconnected.
    response : http.client.HTTPResponse, optional
        The already open probe response (some servers serve one client only,
        so the probe's connection is the one to keep).
    boundary : str, optional
        The content type's ``boundary``; sniffed from the body when absent.
    authorization : str, optional
        ``Authorization`` header value for reconnections.
    """

    def __init__(self, url, timeout=5.0, response=None, boundary=None,
                 authorization=None):
        self.url = url
        self.timeout = timeout
        self._authorization = authorization
        self._cond = threading.Condition()
        self._part = None           # newest _Part
        self._seq = 0
        self._decoded = None        # (seq, Frame) of the last decode
        self._error = None          # last HelperError of the reader
        self._error_seq = -1        # newest part seq when it happened
        self._closed = False
        self._response = None
        self.connections = 0        # successful connections, for tests/logs
        self._thread = threading.Thread(
            target=self._run, args=(response, boundary),
            name="ktamv-mjpeg-reader", daemon=True)
        self._thread.start()

    # -- reader thread

    def _connect(self):
        response = http_get(self.url, self.timeout, self._authorization)
        try:
            kind, boundary = _content_kind(response, self.url)
            if kind != "stream":
                raise HelperError("camera_bad_frame",
                                  "%s no longer serves an MJPEG stream (it "
                                  "now sends single images)." % self.url)
        except HelperError:
            response.close()
            raise
        return response, boundary

    def _set_error(self, error):
        with self._cond:
            if self._closed:
                return          # closing breaks the connection on purpose
            self._error = error
            self._error_seq = self._seq
            self._cond.notify_all()
        log.warning("%s", error.message)

    def _run(self, response, boundary):
        backoff = MIN_BACKOFF
        while not self._closed:
            try:
                if response is None:
                    response, boundary = self._connect()
                with self._cond:
                    if self._closed:
                        break
                    self._response = response
                    self.connections += 1
                for stamp, body, sent in iter_mjpeg_parts(response, boundary):
                    captured = camera_stamp_to_monotonic(sent, stamp)
                    with self._cond:
                        if self._closed:
                            break
                        self._seq += 1
                        self._part = _Part(self._seq, stamp, body, captured)
                        self._cond.notify_all()
                    backoff = MIN_BACKOFF
                else:
                    raise HelperError("camera_unreachable",
                                      "The MJPEG stream at %s ended; "
                                      "reconnecting." % self.url)
            except HelperError as exc:
                self._set_error(exc)
            except (socket.timeout, TimeoutError):
                self._set_error(HelperError(
                    "camera_timeout",
                    "The MJPEG stream at %s sent nothing for %.1f s; "
                    "reconnecting." % (self.url, self.timeout)))
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if not self._closed:
                    self._set_error(_connection_error(self.url, exc,
                                                      self.timeout))
            except Exception as exc:   # never let the reader die silently
                if self._closed:
                    break
                log.exception("MJPEG reader of %s failed", self.url)
                self._set_error(HelperError(
                    "camera_unreachable", "Reading the MJPEG stream at %s "
                    "failed: %s: %s" % (self.url, type(exc).__name__, exc)))
            finally:
                if response is not None:
                    _shutdown_response(response)
                response = None
                with self._cond:
                    self._response = None
            with self._cond:
                if self._cond.wait_for(lambda: self._closed, backoff):
                    break
            backoff = min(MAX_BACKOFF, backoff * 2)

    # -- consumers

    def get_frame(self, not_before=None, timeout=5.0):
        deadline = time.monotonic() + timeout
        skip_through = 0        # parts up to this seq failed to decode
        bad = None
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        raise HelperError("camera_unreachable",
                                          "The camera %s was closed." % self.url)
                    part = self._part
                    if (part is not None and part.seq > skip_through
                            and (not_before is None
                                 or part.timestamp >= not_before)):
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._timeout_error(timeout, not_before, bad)
                    self._cond.wait(remaining)
                cached = self._decoded
                if cached is not None and cached[0] == part.seq:
                    return cached[1]
            try:
                frame = Frame(decode_image(part.data, self.url),
                              part.timestamp, part.captured)
            except HelperError as exc:
                bad, skip_through = exc, part.seq
                continue
            with self._cond:
                if self._decoded is None or self._decoded[0] < part.seq:
                    self._decoded = (part.seq, frame)
            return frame

    def _timeout_error(self, timeout, not_before, bad):
        """The most precise error for "no usable frame in time"."""
        if bad is not None:
            return bad
        error = self._error
        part = self._part
        if error is not None and (part is None or self._error_seq >= part.seq):
            return HelperError(error.code, error.message + (
                " No frame arrived within %.1f s." % timeout), error.details)
        if part is not None and not_before is not None:
            return HelperError("camera_timeout",
                               "No frame newer than the requested time came "
                               "from %s within %.1f s (the newest is %.2f s "
                               "old): the stream may have stalled."
                               % (self.url, timeout,
                                  time.monotonic() - part.timestamp))
        return HelperError("camera_timeout",
                           "No frame from %s within %.1f s: check that the "
                           "camera is streaming." % (self.url, timeout))

    def close(self):
        with self._cond:
            self._closed = True
            response = self._response
            self._cond.notify_all()
        if response is not None:
            _shutdown_response(response, close=False)
        self._thread.join(0.5)
