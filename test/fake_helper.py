"""A scriptable stand-in for ``python -m ktamv_helper`` (tests only).

It speaks the protocol of ``docs/protocol.md`` well enough for the extra's
lifecycle and failure tests (crash mid-request, timeout, garbage output,
processes that refuse to die) without OpenCV or a camera. ``ktamv.py`` runs it
through its ``helper_command`` option, e.g.::

    helper_command: /path/python /path/test/fake_helper.py --crash-on detect

Options (all optional):

--pidfile PATH        append this process's pid to PATH at start
--detect-delay S      answer ``detect`` after S seconds (other requests are
                      answered meanwhile, like the real helper)
--detect-center U,V   the centre ``detect`` reports (default the frame centre)
--crash-on METHOD     exit with status 3, without replying, on METHOD
--crash-once PATH     with --crash-on: crash only if PATH does not exist yet
                      (it is created), so the restarted helper works
--hang-on METHOD      never answer METHOD
--garbage             print non-protocol lines before every reply, and answer
                      ``detect`` with garbage only
--stubborn            ignore SIGTERM, ``shutdown`` and the end of stdin (keeps
                      running until SIGKILL), like a wedged process
--no-ready            never announce ``ready``
--request-log PATH    append every request, as one JSON line, to PATH
--crash-count N PATH  with --crash-on: crash only while PATH holds fewer
                      than N lines (one is added per crash)
--detect-digest D     the ``frame_digest`` ``detect`` reports
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

FRAME_SIZE = [640, 480]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pidfile")
    parser.add_argument("--detect-delay", type=float, default=0.0)
    parser.add_argument("--detect-center")
    parser.add_argument("--crash-on")
    parser.add_argument("--crash-once")
    parser.add_argument("--hang-on")
    parser.add_argument("--garbage", action="store_true")
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--no-ready", action="store_true")
    parser.add_argument("--request-log")
    parser.add_argument("--crash-count", nargs=2)
    parser.add_argument("--detect-digest")
    return parser.parse_args(argv)


class FakeHelper:
    def __init__(self, options, out=sys.stdout):
        self.options = options
        self.out = out
        self.lock = threading.Lock()
        if options.detect_center:
            self.center = [float(v) for v in options.detect_center.split(",")]
        else:
            self.center = [(FRAME_SIZE[0] - 1) / 2.0, (FRAME_SIZE[1] - 1) / 2.0]

    def write(self, message):
        line = message if isinstance(message, str) else json.dumps(message)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def reply(self, req_id, result=None, error=None):
        if self.options.garbage:
            self.write("this is not JSON {{{")
            self.write("[1, 2, 3]")
        if error is not None:
            self.write({"id": req_id, "error": error})
        else:
            self.write({"id": req_id, "result": result})

    def handle(self, request):
        req_id = request.get("id")
        method = request.get("method")
        opts = self.options
        if opts.request_log:
            with open(opts.request_log, "a") as f:
                f.write(json.dumps(request) + "\n")
        if method == opts.crash_on and opts.crash_count:
            limit, path = int(opts.crash_count[0]), opts.crash_count[1]
            done = 0
            if os.path.exists(path):
                with open(path) as f:
                    done = len(f.readlines())
            if done < limit:
                with open(path, "a") as f:
                    f.write("crash\n")
                sys.stderr.write("fake helper: crashing on %s\n" % method)
                sys.stderr.flush()
                os._exit(3)
        elif method == opts.crash_on:
            if not opts.crash_once or not os.path.exists(opts.crash_once):
                if opts.crash_once:
                    open(opts.crash_once, "w").close()
                sys.stderr.write("fake helper: crashing on %s\n" % method)
                sys.stderr.flush()
                os._exit(3)
        if method == opts.hang_on:
            return
        if method == "detect":
            if opts.garbage:
                self.write("garbage instead of a detection")
                return
            if opts.detect_delay > 0:
                threading.Timer(opts.detect_delay, self.reply,
                                (req_id, self.detection())).start()
                return
            self.reply(req_id, self.detection())
        elif method == "configure":
            self.reply(req_id, {"camera_url": request.get("params", {}).get(
                "camera_url"), "preview": {"running": False, "url": None,
                                           "error": None}})
        elif method == "version":
            self.reply(req_id, {"helper": "fake", "protocol": 1,
                                "python": sys.version.split()[0],
                                "opencv": "none", "numpy": "none",
                                "skimage": "none", "camera": None,
                                "preview": None})
        elif method == "grab":
            self.reply(req_id, {"frame_size": FRAME_SIZE,
                                "frame_time": time.monotonic(), "age": 0.0,
                                "saved": None})
        elif method == "shutdown":
            self.reply(req_id, {"ok": True})
            if not opts.stubborn:
                sys.exit(0)
        else:
            self.reply(req_id, error={"code": "unknown_method",
                                      "message": "The fake helper has no "
                                                 "method %r." % (method,)})

    def detection(self):
        return {"center": list(self.center), "radius": 20.0, "score": 0.9,
                "frames_used": 3, "frames_seen": 3, "spread": 0.01,
                "frame_size": FRAME_SIZE, "frame_time": time.monotonic(),
                "frame_digest": self.options.detect_digest,
                "elapsed": self.options.detect_delay}

    def serve(self, stdin=sys.stdin):
        if not self.options.no_ready:
            self.write({"event": "ready", "helper": "fake", "protocol": 1,
                        "python": sys.version.split()[0], "pid": os.getpid(),
                        "monotonic": time.monotonic()})
        for line in stdin:
            try:
                request = json.loads(line)
            except ValueError:
                self.write({"event": "error", "code": "parse_error",
                            "message": "not JSON"})
                continue
            self.handle(request)
        if self.options.stubborn:
            while True:  # end of stdin does not stop a wedged process
                time.sleep(3600)


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.pidfile:
        with open(options.pidfile, "a") as f:
            f.write("%d\n" % os.getpid())
    if options.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    FakeHelper(options).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
