"""Benchmark of the helper process: start-up time and resident memory.

Not a test: run it and read the table.

    .venv/bin/python test/bench_helper.py [--runs 5] [--seconds 10]

Measures, with the real helper (``python -m ktamv_helper``) as ktamv.py
starts it:

* time from spawning the process to its ``ready`` event, and to the reply
  of the first ``version`` request (which imports OpenCV, numpy and
  scikit-image);
* resident memory (VmRSS sampled, VmHWM peak, from /proc) while the helper
  reads a real 640x480 MJPEG stream served by ffmpeg and answers ``detect``
  requests back to back, and its CPU use while the stream is open but idle;
* time from ``ready`` to the reply of the first ``configure`` + ``detect``
  (opening the stream, and the detector's lazy imports, which the helper
  warms up right after ``ready``);
* time from closing its stdin to its exit.

Targets (issue 2): ready <= 1.5 s, memory <= 150 MB.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from conftest import MjpegServer, draw_nozzle  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Helper:
    def __init__(self):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ktamv_helper"], cwd=str(REPO),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.next_id = 1

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("helper exited")
        return json.loads(line)

    def call(self, method, params=None):
        request_id = self.next_id
        self.next_id += 1
        self.process.stdin.write(json.dumps(
            {"id": request_id, "method": method, "params": params or {}}
        ).encode() + b"\n")
        self.process.stdin.flush()
        while True:
            message = self.read()
            if message.get("id") == request_id:
                return message

    def status(self, key):
        with open("/proc/%d/status" % self.process.pid) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # MiB
        return float("nan")

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.process.pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def close(self):
        closed = time.monotonic()
        self.process.stdin.close()
        code = self.process.wait(30)
        return code, time.monotonic() - closed


def bench_startup(runs):
    ready, first_version, exits = [], [], []
    for _ in range(runs):
        helper = Helper()
        message = helper.read()
        assert message["event"] == "ready", message
        ready.append(time.monotonic() - helper.started)
        reply = helper.call("version", {"check_camera": False})
        assert "result" in reply, reply
        first_version.append(time.monotonic() - helper.started)
        code, took = helper.close()
        assert code == 0
        exits.append(took)
    return ready, first_version, exits


def bench_stream(seconds, folder):
    import cv2
    image_path = os.path.join(folder, "nozzle.png")
    cv2.imwrite(image_path, draw_nozzle())
    server = MjpegServer(image_path, fps=30)
    helper = Helper()
    try:
        assert helper.read()["event"] == "ready"
        first_started = time.monotonic()
        reply = helper.call("configure", {"camera_url": server.url})
        assert "result" in reply, reply
        assert "result" in helper.call("detect", {"frames": 3})
        first_detect = time.monotonic() - first_started
        # Idle: stream open, no requests.
        cpu_before, idle_started = helper.cpu_seconds(), time.monotonic()
        time.sleep(5.0)
        idle_cpu = ((helper.cpu_seconds() - cpu_before)
                    / (time.monotonic() - idle_started))
        rss, latencies, failures = [], [], 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            asked = time.monotonic()
            reply = helper.call("detect", {"frames": 3, "not_before": asked})
            if "result" in reply:
                latencies.append(time.monotonic() - asked)
            else:
                failures += 1
            rss.append(helper.status("VmRSS"))
        peak = helper.status("VmHWM")
        code, exit_time = helper.close()
        return {"rss_max": max(rss), "rss_median": statistics.median(rss),
                "hwm": peak, "detects": len(latencies), "failures": failures,
                "detect_median": statistics.median(latencies) if latencies else None,
                "idle_cpu": idle_cpu, "first_detect": first_detect, "exit_code": code, "exit_time": exit_time}
    finally:
        if helper.process.poll() is None:
            helper.process.kill()
        server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    ready, first_version, exits = bench_startup(args.runs)
    with tempfile.TemporaryDirectory() as folder:
        stream = bench_stream(args.seconds, folder)

    def row(name, value, target=""):
        print("| %-58s | %-18s | %-8s |" % (name, value, target))

    print("| %-58s | %-18s | %-8s |" % ("measure", "value", "target"))
    print("|%s|%s|%s|" % ("-" * 60, "-" * 20, "-" * 10))
    row("start-up to `ready`, median of %d (max)" % args.runs,
        "%.3f s (%.3f s)" % (statistics.median(ready), max(ready)), "<= 1.5 s")
    row("start-up to first `version` reply, median (max)",
        "%.3f s (%.3f s)" % (statistics.median(first_version),
                             max(first_version)))
    row("stdin closed to exit, median (max)",
        "%.3f s (%.3f s)" % (statistics.median(exits), max(exits)), "<= 1 s")
    row("`ready` to first configure + detect reply (stream)",
        "%.3f s" % stream["first_detect"])
    row("VmRSS reading 640x480 MJPEG @30 fps + detect, max",
        "%.1f MiB" % stream["rss_max"], "<= 150 MB")
    row("VmRSS, median of samples", "%.1f MiB" % stream["rss_median"])
    row("VmHWM (peak resident) at the end", "%.1f MiB" % stream["hwm"],
        "<= 150 MB")
    row("detect requests (frames=3) in %.0f s, failures" % args.seconds,
        "%d, %d" % (stream["detects"], stream["failures"]))
    if stream["detect_median"] is not None:
        row("detect latency from not_before, median",
            "%.0f ms" % (1000 * stream["detect_median"]))
    row("CPU while the stream is open and idle (one core = 100 %)",
        "%.1f %%" % (100 * stream["idle_cpu"]))
    row("stdin closed to exit with the stream open",
        "%.3f s (code %d)" % (stream["exit_time"], stream["exit_code"]), "<= 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
