"""CPU cost of the preview server (numbers for docs/benchmarks.md).

Runs the server and a publisher (standing in for the detector) in this
process and the viewers as separate ``curl`` processes reading the MJPEG
stream, so the CPU time measured (``time.process_time()``, all threads of
this process) is the preview's own plus the publisher's.

    .venv/bin/python test/bench_preview.py [--seconds 10]
"""

import argparse
import os
import subprocess
import sys
import threading
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ktamv_helper.annotate import annotate  # noqa: E402
from ktamv_helper.preview import PreviewServer  # noqa: E402
from ktamv_helper.simulation.render import render_nozzle  # noqa: E402


def frame(width, height):
    return render_nozzle((width, height), (width / 2 + 7.3, height / 2 - 4.1),
                         height / 24.0, rng=np.random.default_rng(0))


def per_frame_cost(width, height, runs=30):
    """Median seconds to annotate and JPEG-encode one frame."""
    image = frame(width, height)
    det = types.SimpleNamespace(center=(width / 2 + 7.3, height / 2 - 4.1),
                                radius=height / 24.0, score=0.9)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        annotated = annotate(image, det, 1.0, ["live preview", "last: ...",
                                               "frame age 0.05 s"])
        cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, 80])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(seconds, viewers, publish_hz, size=(640, 480), max_fps=10):
    preview = PreviewServer("127.0.0.1", 0, max_fps=max_fps)
    preview.start()
    image = frame(*size)
    det = types.SimpleNamespace(center=(size[0] / 2 + 7.3, size[1] / 2 - 4.1),
                                radius=size[1] / 24.0, score=0.9)
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            preview.publish(image, det, 1.0, ["bench"])
            stop.wait(1.0 / publish_hz)

    publisher = threading.Thread(target=publish, daemon=True)
    if publish_hz:
        publisher.start()
    else:
        preview.publish(image, det, 1.0, ["bench"])
    clients = [subprocess.Popen(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}",
         "--max-time", str(seconds + 1), preview.status()["stream_url"]],
        stdout=subprocess.PIPE, text=True) for _ in range(viewers)]
    time.sleep(1.0)  # let the viewers connect
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    stop.set()
    received = [int(client.communicate()[0] or 0) for client in clients]
    jpeg_size = len(cv2.imencode(".jpg", annotate(image, det, 1.0, ["bench"]),
                                 [cv2.IMWRITE_JPEG_QUALITY, 80])[1])
    preview.close()
    # Frames per second each viewer got (bytes / frame size; curl ran
    # about seconds + 1 s).
    fps = [r / float(jpeg_size) / (seconds + 1.0) for r in received]
    return 100.0 * cpu / wall, (min(fps) if fps else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print("annotate + encode one frame, median: 640x480 %.1f ms, "
          "1920x1080 %.1f ms" % (1000 * per_frame_cost(640, 480),
                                 1000 * per_frame_cost(1920, 1080)))
    cases = [
        ("server idle, no viewer, nothing published", 0, 0),
        ("one viewer, nothing new published", 1, 0),
        ("detector publishing 30 fps, no viewer", 0, 30),
        ("detector publishing 30 fps, 1 viewer at 10 fps", 1, 30),
        ("detector publishing 30 fps, 10 viewers at 10 fps", 10, 30),
        ("1920x1080 publishing 30 fps, 1 viewer at 10 fps", 1, 30,
         (1920, 1080)),
    ]
    for name, viewers, hz, *size in cases:
        cpu, fps = measure(args.seconds, viewers, hz, *size)
        print("%-52s %5.1f %% of one core%s" % (
            name, cpu, "" if fps is None else
            ", slowest viewer got %.1f frames/s" % fps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
