"""install.sh against a fake home folder: a Klipper tree stub, a
printer_data/config folder with a printer.cfg (ending in a SAVE_CONFIG block)
and a moonraker.conf.

Downloading OpenCV for every run would take minutes, so most tests seed the
helper venv the way a previous install would have left it: a venv whose
site-packages point (through a .pth file) at the repository's .venv. install.sh
then runs its real steps on it: it reuses the venv, runs
``pip install --prefer-binary -r requirements.txt`` (pip finds every
requirement satisfied; PIP_NO_INDEX keeps it off the network) and checks that
the helper imports. ``test_fresh_venv_creation_and_pip_failure`` covers
creating a venv from nothing.
"""

import configparser
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"
ORIGIN = "https://example.invalid/ktamv.git"
BEGIN_MARK = "# >>> kTAMV (added by kTAMV's install.sh; 'install.sh --uninstall' removes it)"
END_MARK = "# <<< kTAMV"
INCLUDE = "[include ktamv_macros.cfg]"

PRINTER_CFG = """\
# A user's printer.cfg
[include mainsail.cfg]

[printer]
kinematics: corexy
max_velocity: 300
max_accel: 3000

[gcode_macro T0]
gcode:
    ACTIVATE_EXTRUDER EXTRUDER=extruder

#*# <---------------------- SAVE_CONFIG ---------------------->
#*# DO NOT EDIT THIS BLOCK OR BELOW. The contents are auto-generated.
#*#
#*# [extruder]
#*# control = pid
#*# pid_kp = 26.213
"""

MOONRAKER_CONF = """\
[server]
host: 0.0.0.0
port: 7125

[update_manager]
refresh_interval: 168

[update_manager mainsail]
type: web
repo: mainsail-crew/mainsail
path: ~/mainsail
"""


def site_packages_of_repo_venv():
    return sysconfig.get_paths()["purelib"]


def seed_venv(venv):
    """A venv (no pip of its own) that sees the repo .venv's packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "repo_venv.pth").write_text(site_packages_of_repo_venv() + "\n")


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    (home / "klipper" / "klippy" / "extras").mkdir(parents=True)
    (home / "klipper" / ".git" / "info").mkdir(parents=True)
    (home / "klipper" / ".git" / "info" / "exclude").write_text("# git ls-files --others --exclude-from=.git/info/exclude\n")
    config = home / "printer_data" / "config"
    config.mkdir(parents=True)
    (config / "printer.cfg").write_text(PRINTER_CFG)
    (config / "moonraker.conf").write_text(MOONRAKER_CONF)
    (config / "mainsail.cfg").write_text("[virtual_sdcard]\npath: ~/printer_data/gcodes\n")
    return home


@pytest.fixture
def seeded_home(home):
    seed_venv(home / "ktamv-env")
    return home


def run_install(home, *args, timeout=300, apt=False, path_prefix=None):
    env = dict(os.environ, HOME=str(home), PIP_NO_INDEX="1")
    env.pop("KTAMV_PIP_ARGS", None)
    if path_prefix:
        env["PATH"] = "%s:%s" % (path_prefix, env["PATH"])
    options = ["--allow-root", "--origin", ORIGIN] + ([] if apt else ["--no-apt"])
    return subprocess.run(["bash", str(INSTALL), *options, *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def fake_commands(folder, **scripts):
    """Executables that stand in for system tools (dpkg, apt-get, systemctl):
    each logs its arguments to <name>.log and runs the given shell body."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        tool = folder / name.replace("_", "-")
        tool.write_text('#!/bin/sh\necho "$*" >> "%s.log"\n%s\n' % (tool, body))
        tool.chmod(0o755)
    return folder


def snapshot(home):
    """Every file, link and folder of the Klipper tree and the config folder,
    with contents or link targets (the rest of the fake home is not ours)."""
    state = {}
    paths = [p for top in ("klipper", "printer_data") for p in (home / top).rglob("*")]
    for path in sorted(paths):
        rel = str(path.relative_to(home))
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_file():
            state[rel] = ("file", path.read_bytes())
        else:
            state[rel] = ("dir",)
    return state


def block_of(text):
    lines = text.splitlines()
    start = lines.index(BEGIN_MARK)
    end = lines.index(END_MARK, start)
    return lines[start:end + 1]


def config_paths(home):
    config = home / "printer_data" / "config"
    return config / "printer.cfg", config / "moonraker.conf", config / "ktamv_macros.cfg"


def assert_ok(result):
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_sets_everything_up_once(seeded_home):
    home = seeded_home
    printer_cfg, moonraker_conf, macros = config_paths(home)

    first = run_install(home)
    assert_ok(first)

    link = home / "klipper" / "klippy" / "extras" / "ktamv.py"
    assert link.is_symlink()
    assert os.readlink(link) == str(REPO / "ktamv.py")
    assert "klippy/extras/ktamv.py" in (home / "klipper" / ".git" / "info" / "exclude").read_text().splitlines()

    text = printer_cfg.read_text()
    assert text.count(INCLUDE) == 1
    block = block_of(text)
    assert INCLUDE in block
    assert "#[ktamv]" in block
    assert any(line.startswith("#nozzle_cam_url:") for line in block)
    assert "#helper_python: %s/bin/python" % (home / "ktamv-env") in block
    # Nothing in the template is active: Klipper starts before it is filled in.
    assert [line for line in block if line and not line.startswith("#")] == [INCLUDE]
    # The user's content is intact and the SAVE_CONFIG block is still last.
    without_block = text.replace("\n" + "\n".join(block) + "\n", "", 1)
    assert without_block == PRINTER_CFG
    save_at = text.index("#*# <---------------------- SAVE_CONFIG")
    assert text.index(END_MARK) < save_at
    assert all(line.startswith("#*#") for line in text[save_at:].splitlines())

    conf_text = moonraker_conf.read_text()
    assert conf_text.count("[update_manager ktamv]") == 1
    assert conf_text.startswith(MOONRAKER_CONF)
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.read_string(conf_text)
    entry = parser["update_manager ktamv"]
    assert entry["type"] == "git_repo"
    assert Path(entry["path"]).expanduser() == REPO
    assert entry["origin"] == ORIGIN
    assert entry["primary_branch"] == "main"
    assert entry["managed_services"] == "klipper"
    assert Path(entry["virtualenv"]).expanduser() == home / "ktamv-env" or \
        entry["virtualenv"] == "~/ktamv-env"
    # Moonraker runs a plain `pip install -r` on updates: the file itself
    # must keep pip from compiling OpenCV.
    requirement_lines = (REPO / entry["requirements"]).read_text().splitlines()
    assert "--only-binary opencv-python-headless" in requirement_lines
    assert "--prefer-binary" in requirement_lines
    assert (REPO / entry["system_dependencies"]).is_file()
    assert parser["update_manager mainsail"]["repo"] == "mainsail-crew/mainsail"

    assert macros.read_bytes() == (REPO / "examples" / "ktamv_macros.cfg").read_bytes()

    imported = subprocess.run(
        [str(home / "ktamv-env" / "bin" / "python"), "-c",
         "import cv2, numpy, skimage; print(cv2.__version__)"],
        capture_output=True, text=True, cwd=str(home))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip()

    # Second run: nothing changes, and it says so.
    before = snapshot(home)
    second = run_install(home)
    assert_ok(second)
    assert snapshot(home) == before
    assert "already included" in second.stdout
    assert "already present" in second.stdout
    assert "already linked" in second.stdout


def test_uninstall_restores_the_users_files(seeded_home):
    home = seeded_home
    printer_cfg, moonraker_conf, macros = config_paths(home)
    exclude = home / "klipper" / ".git" / "info" / "exclude"
    exclude_before = exclude.read_text()
    assert_ok(run_install(home))

    result = run_install(home, "--uninstall")
    assert_ok(result)
    assert not (home / "klipper" / "klippy" / "extras" / "ktamv.py").exists()
    assert printer_cfg.read_text() == PRINTER_CFG
    assert moonraker_conf.read_text() == MOONRAKER_CONF
    assert not macros.exists()
    assert exclude.read_text() == exclude_before
    assert (home / "ktamv-env" / "bin" / "python").exists()
    assert "--remove-venv" in result.stdout

    # Uninstalling again changes nothing; --remove-venv deletes the venv.
    before = snapshot(home)
    assert_ok(run_install(home, "--uninstall"))
    assert snapshot(home) == before
    assert_ok(run_install(home, "--uninstall", "--remove-venv"))
    assert not (home / "ktamv-env").exists()


def test_uninstall_keeps_a_ktamv_section_the_user_enabled(seeded_home):
    home = seeded_home
    printer_cfg, _, macros = config_paths(home)
    assert_ok(run_install(home))
    # The user enables the template and edits the macros.
    text = printer_cfg.read_text()
    text = text.replace("\n#[ktamv]\n", "\n[ktamv]\n", 1)
    text = "\n".join(
        line[1:] if line.startswith("#nozzle_cam_url:") else line
        for line in text.split("\n"))
    printer_cfg.write_text(text)
    macros.write_text(macros.read_text() + "\n# my own tweak\n")

    result = run_install(home, "--uninstall")
    assert_ok(result)
    after = printer_cfg.read_text()
    assert INCLUDE not in after
    assert BEGIN_MARK not in after and END_MARK not in after
    assert "\n[ktamv]\n" in after
    assert any(line.startswith("nozzle_cam_url:") for line in after.splitlines())
    assert "[ktamv] section" in result.stderr
    assert macros.exists()
    assert "you changed it" in result.stdout


def test_existing_ktamv_setup_is_kept(seeded_home):
    """An old kTAMV user: [ktamv] in an included file, an old update entry."""
    home = seeded_home
    printer_cfg, moonraker_conf, _ = config_paths(home)
    config = printer_cfg.parent
    (config / "ktamv.cfg").write_text(
        "[ktamv]\nnozzle_cam_url: http://localhost/webcam2/snapshot\n"
        "server_url: http://localhost:8085\nmove_speed: 1800\n")
    user_cfg = PRINTER_CFG.replace("[include mainsail.cfg]", "[include mainsail.cfg]\n[include ktamv.cfg]")
    printer_cfg.write_text(user_cfg)
    old_entry = ("\n[update_manager ktamv]\ntype: git_repo\npath: ~/kTAMV\n"
                 "origin: https://github.com/TypQxQ/kTAMV.git\nmanaged_services: klipper\n")
    moonraker_conf.write_text(MOONRAKER_CONF + old_entry)

    result = run_install(home)
    assert_ok(result)
    text = printer_cfg.read_text()
    assert text.count(INCLUDE) == 1
    assert "[ktamv]" not in text  # no second, commented template
    assert "keeping your existing [ktamv] section in %s" % (config / "ktamv.cfg") in result.stdout
    assert moonraker_conf.read_text() == MOONRAKER_CONF + old_entry
    assert "~/kTAMV" in result.stderr

    assert_ok(run_install(home, "--uninstall"))
    assert printer_cfg.read_text() == user_cfg
    assert moonraker_conf.read_text() == MOONRAKER_CONF + old_entry
    assert (config / "ktamv.cfg").read_text().startswith("[ktamv]\n")


@pytest.mark.parametrize("args, message", [
    (["-k", "/nonexistent/klipper"], "no Klipper found at /nonexistent/klipper"),
    (["-c", "/nonexistent/config"], "config directory /nonexistent/config does not exist"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_bad_arguments_change_nothing(home, args, message):
    before = snapshot(home)
    for extra in ([], ["--uninstall"]):
        result = run_install(home, *args, *extra)
        assert result.returncode != 0
        assert message in result.stderr
        assert snapshot(home) == before
    assert not (home / "ktamv-env").exists()


def test_refuses_root_without_allow_root(home):
    if os.geteuid() != 0:
        pytest.skip("needs to run as root to see the refusal")
    env = dict(os.environ, HOME=str(home))
    result = subprocess.run(["bash", str(INSTALL), "--no-apt"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "not as root" in result.stderr
    assert not (home / "ktamv-env").exists()


def test_fresh_venv_creation_and_pip_failure(home):
    """No venv yet: install.sh creates one; pip cannot reach an index here,
    so the install stops with pip's reason before touching Klipper or configs."""
    before = snapshot(home)
    result = run_install(home, "--python", sys.executable)
    assert result.returncode != 0
    assert "creating helper venv" in result.stdout
    assert (home / "ktamv-env" / "pyvenv.cfg").is_file()
    assert "pip could not install" in result.stderr
    assert snapshot(home) == before


def test_missing_moonraker_conf_is_a_warning(seeded_home):
    home = seeded_home
    printer_cfg, moonraker_conf, _ = config_paths(home)
    moonraker_conf.unlink()
    result = run_install(home)
    assert_ok(result)
    assert "skipping Moonraker's update_manager entry" in result.stderr
    assert not moonraker_conf.exists()
    assert printer_cfg.read_text().count(INCLUDE) == 1


def test_installs_only_missing_debian_packages(seeded_home, tmp_path):
    """The apt step asks dpkg which packages of system-dependencies.json are
    missing and installs only those (dpkg and apt-get are stand-ins here)."""
    fakes = fake_commands(tmp_path / "bin",
                          dpkg='case "$2" in python3-venv) exit 0 ;; *) exit 1 ;; esac',
                          apt_get="exit 0")
    result = run_install(seeded_home, apt=True, path_prefix=fakes)
    assert_ok(result)
    apt_calls = (fakes / "apt-get.log").read_text().splitlines()
    assert apt_calls == ["update -qq", "install -y -qq libopenblas0"]
    assert "installing Debian packages: libopenblas0" in result.stdout


def test_apt_failure_stops_before_any_change(seeded_home, tmp_path):
    fakes = fake_commands(tmp_path / "bin", dpkg="exit 1", apt_get="exit 100")
    before = snapshot(seeded_home)
    result = run_install(seeded_home, apt=True, path_prefix=fakes)
    assert result.returncode != 0
    assert "apt-get update failed" in result.stderr and "--no-apt" in result.stderr
    assert snapshot(seeded_home) == before


def test_restart_only_when_asked(seeded_home, tmp_path):
    fakes = fake_commands(tmp_path / "bin", systemctl="exit 0")
    assert_ok(run_install(seeded_home, path_prefix=fakes))
    assert not (fakes / "systemctl.log").exists()
    assert_ok(run_install(seeded_home, "--restart", path_prefix=fakes))
    assert (fakes / "systemctl.log").read_text().splitlines() == ["restart klipper"]


@pytest.mark.skipif(os.environ.get("KTAMV_TEST_NETWORK") != "1",
                    reason="downloads OpenCV, numpy and scikit-image from PyPI; "
                           "set KTAMV_TEST_NETWORK=1 to run")
def test_real_install_from_pypi(home):
    """The whole path a printer owner takes: a new venv and a real download."""
    env = dict(os.environ, HOME=str(home))
    env.pop("PIP_NO_INDEX", None)
    env.setdefault("PIP_CACHE_DIR", os.path.expanduser("~/.cache/pip"))
    result = subprocess.run(
        ["bash", str(INSTALL), "--allow-root", "--no-apt", "--origin", ORIGIN],
        env=env, capture_output=True, text=True, timeout=1800)
    assert_ok(result)
    assert "helper venv OK: OpenCV" in result.stdout
    versions = subprocess.run(
        [str(home / "ktamv-env" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True).stdout
    assert "opencv-python-headless==" in versions


def test_only_config_files_in_use_count(seeded_home):
    """Klipper's SAVE_CONFIG backups and unused files in the config folder may
    mention kTAMV; only printer.cfg and what it includes (globs too) count."""
    home = seeded_home
    printer_cfg, _, _ = config_paths(home)
    config = printer_cfg.parent
    (config / "printer-20240101_120000.cfg").write_text(
        "[include ktamv_macros.cfg]\n[ktamv]\nnozzle_cam_url: http://old/\n")
    (config / "tools").mkdir()
    (config / "tools" / "t0.cfg").write_text("[gcode_macro T9]\ngcode:\n")
    user_cfg = PRINTER_CFG.replace("[include mainsail.cfg]", "[include mainsail.cfg]\n[include tools/*.cfg]")
    printer_cfg.write_text(user_cfg)

    result = run_install(home)
    assert_ok(result)
    text = printer_cfg.read_text()
    assert text.count(INCLUDE) == 1 and "#[ktamv]" in text

    # A [ktamv] section in a file included through a glob is found.
    (config / "tools" / "camera.cfg").write_text("[ktamv]\nnozzle_cam_url: http://x/\n")
    assert_ok(run_install(home, "--uninstall"))
    assert printer_cfg.read_text() == user_cfg
    result = run_install(home)
    assert_ok(result)
    assert "#[ktamv]" not in printer_cfg.read_text()
    assert "keeping your existing [ktamv] section in %s" % (config / "tools" / "camera.cfg") in result.stdout


def test_uninstall_warns_about_a_saved_calibration(seeded_home):
    home = seeded_home
    printer_cfg, _, _ = config_paths(home)
    saved = PRINTER_CFG + "#*#\n#*# [ktamv]\n#*# camera_matrix = 0.01, 0.0, 0.0, -0.01\n"
    printer_cfg.write_text(saved)
    assert_ok(run_install(home))
    result = run_install(home, "--uninstall")
    assert_ok(result)
    assert printer_cfg.read_text() == saved
    assert "SAVE_CONFIG block" in result.stderr and "'#*#' lines" in result.stderr


def uncomment_template(text):
    """What Mainsail's or Fluidd's editor does to the selected lines from
    ``#[ktamv]`` to ``#debug_keep`` (and the ``##`` lines above them) with
    Ctrl+/: it removes the first ``#`` of every line."""
    lines = text.split("\n")
    start = lines.index(BEGIN_MARK)
    end = lines.index(END_MARK, start)
    for i in range(start + 1, end):
        if lines[i].startswith("#"):
            lines[i] = lines[i][1:]
    return "\n".join(lines)


def test_whole_template_uncommented_loads_in_real_klippy(seeded_home, tmp_path):
    """The user uncomments the whole template in one go: Klippy loads it with
    every option at its template value, and no explanation leaks into one."""
    from klippy_harness import KLIPPY, printer_config, run_klippy
    if not KLIPPY.exists():
        pytest.skip("no .venv-klippy; run test/setup.sh")
    home = seeded_home
    printer_cfg, _, macros = config_paths(home)
    assert_ok(run_install(home))
    block = block_of(uncomment_template(printer_cfg.read_text()))
    # Every explanation is still a comment; every option line is active.
    assert [l for l in block if l.startswith("#") and not l.startswith("# ")] == []
    active = [l for l in block[1:-1] if l and not l.startswith("#")]
    assert active[:2] == [INCLUDE, "[ktamv]"]
    assert "nozzle_cam_url: http://localhost/webcam2/?action=snapshot" in active
    example = (REPO / "examples" / "printer.cfg").read_text()
    options = re.findall(r"^#?(\w+):", example, re.M)
    assert len(options) == 27
    assert [l.split(":")[0] for l in active[2:]] == options

    workdir = tmp_path / "klippy"
    workdir.mkdir()
    (workdir / "ktamv_macros.cfg").write_bytes(macros.read_bytes())
    section = "\n".join(block) + """
[gcode_macro SHOW_KTAMV]
gcode:
  {action_respond_info("ktamv-config speed=%s position=%s state=%s" % (
      printer.ktamv.travel_speed, printer.ktamv.camera_position,
      printer.ktamv.helper_state))}
"""
    result = run_klippy(workdir, printer_config(section), "SHOW_KTAMV\n")
    assert result.returncode == 0, result.tail()
    assert "Unable to parse option" not in result.log
    shown = result.find(r"ktamv-config (.*)")
    assert shown and shown[0].startswith("speed=1800.0 position=[150.0, 150.0]"), result.tail()


# printer.cfg and moonraker.conf as the old kTAMV's installer (with its
# server) leaves them: [ktamv] and its macros include appended, and an update
# entry whose header has a stray "]".
OLD_KTAMV_PRINTER_CFG = PRINTER_CFG.replace("\n#*# <--", """

[ktamv]
nozzle_cam_url: http://localhost/webcam/snapshot?max_delay=0
server_url: http://localhost:8085
move_speed: 1800
send_frame_to_cloud: false


[include ktamv-macros.cfg]

#*# <--""", 1)
OLD_KTAMV_ENTRY = """

[update_manager ktamv]]
type: git_repo
path: ~/kTAMV
origin: https://github.com/TypQxQ/kTAMV.git
primary_branch: main
install_script: install.sh
managed_services: klipper
"""


def test_migration_from_the_old_installers_config(seeded_home, tmp_path):
    home = seeded_home
    printer_cfg, moonraker_conf, macros = config_paths(home)
    config = printer_cfg.parent
    printer_cfg.write_text(OLD_KTAMV_PRINTER_CFG)
    (config / "ktamv-macros.cfg").write_text(
        "[gcode_macro KTAMV_CALIB]\ngcode:\n  KTAMV_CALIB_CAMERA\n")
    moonraker_conf.write_text(MOONRAKER_CONF + OLD_KTAMV_ENTRY)

    result = run_install(home)
    assert_ok(result)
    # One macros include (the old one, named precisely), no template.
    assert printer_cfg.read_text() == OLD_KTAMV_PRINTER_CFG
    assert ("%s includes the old kTAMV's ktamv-macros.cfg; not adding %s"
            % (printer_cfg, INCLUDE)) in result.stderr
    # One update entry, ours; the old file saved.
    conf_text = moonraker_conf.read_text()
    assert "ktamv]]" not in conf_text
    parser = configparser.ConfigParser()
    parser.read_string(conf_text)
    assert [s for s in parser.sections() if "ktamv" in s] == ["update_manager ktamv"]
    assert Path(parser["update_manager ktamv"]["path"]).expanduser() == REPO
    assert conf_text.startswith(MOONRAKER_CONF)
    backup = config / "moonraker.conf.before-ktamv"
    assert backup.read_text() == MOONRAKER_CONF + OLD_KTAMV_ENTRY
    assert "removed the old kTAMV's [update_manager ktamv]] entry" in result.stderr
    assert "saved as %s" % backup in result.stderr

    # Idempotent.
    before = snapshot(home)
    again = run_install(home)
    assert_ok(again)
    assert snapshot(home) == before

    # Klippy loads it: one [ktamv], the macros defined once.
    from klippy_harness import KLIPPY, printer_config, run_klippy
    if not KLIPPY.exists():
        pytest.skip("no .venv-klippy; run test/setup.sh")
    workdir = tmp_path / "klippy"
    workdir.mkdir()
    (workdir / "ktamv-macros.cfg").write_text((config / "ktamv-macros.cfg").read_text())
    user = printer_cfg.read_text().split("[gcode_macro T0]")[1].split("#*#")[0]
    section = user.split("[ktamv]", 1)[1]
    klippy_cfg = ("[ktamv]" + section.replace(
        "move_speed: 1800", "move_speed: 1800\nhelper_python: %s" % sys.executable))
    result = run_klippy(workdir, printer_config(klippy_cfg), "KTAMV_CALIB_CAMERA RADIUS=99\n")
    # Reaching the command's own range check proves the config loaded.
    assert ("Error on 'KTAMV_CALIB_CAMERA RADIUS=99': RADIUS must have maximum"
            " of 10.0") in result.log, result.tail()
    assert "option(s) server_url, send_frame_to_cloud are ignored" in result.log


def test_symlinked_printer_cfg_includes_resolve_from_the_links_folder(seeded_home):
    """printer.cfg is a link into another folder (as KIAUH and MainsailOS set
    up) and includes ktamv.cfg, which lies next to the link: Klipper reads
    that file, so install.sh must find its [ktamv] and add no template."""
    home = seeded_home
    printer_cfg, _, _ = config_paths(home)
    config = printer_cfg.parent
    elsewhere = home / "printer-configs"
    elsewhere.mkdir()
    user_cfg = PRINTER_CFG.replace("[include mainsail.cfg]", "[include mainsail.cfg]\n[include ktamv.cfg]")
    (elsewhere / "printer.cfg").write_text(user_cfg)
    printer_cfg.unlink()
    printer_cfg.symlink_to(elsewhere / "printer.cfg")
    (config / "ktamv.cfg").write_text("[ktamv]\nnozzle_cam_url: http://localhost/webcam/?action=snapshot\n")

    result = run_install(home)
    assert_ok(result)
    text = printer_cfg.read_text()
    assert "#[ktamv]" not in text and text.count(INCLUDE) == 1
    assert "keeping your existing [ktamv] section in %s" % (config / "ktamv.cfg") in result.stdout
    assert printer_cfg.is_symlink()
    assert os.readlink(printer_cfg) == str(elsewhere / "printer.cfg")
    assert_ok(run_install(home, "--uninstall"))
    assert (elsewhere / "printer.cfg").read_text() == user_cfg


def test_macros_follow_the_example_unless_the_user_edited_them(seeded_home):
    home = seeded_home
    printer_cfg, _, macros = config_paths(home)
    config = printer_cfg.parent
    example = (REPO / "examples" / "ktamv_macros.cfg").read_text()
    assert_ok(run_install(home))
    sums = config / ".ktamv_macros.cfg.sha256"
    assert sums.read_text().strip() == hashlib.sha256(example.encode()).hexdigest()

    # An older example as a previous install.sh copied (and recorded) it; a
    # `git pull` has since changed KTAMV_SAVE_OFFSETS and added nothing else.
    old = example.replace("[gcode_macro KTAMV_SAVE_OFFSETS]\n",
                          "[gcode_macro KTAMV_SAVE_OFFSETS]\n# old\n", 1)
    old = old.replace("description: Store the measured", "description: Save the measured", 1)
    assert old != example
    macros.write_text(old)
    sums.write_text(hashlib.sha256(old.encode()).hexdigest() + "\n")
    result = run_install(home)
    assert_ok(result)
    assert macros.read_text() == example
    assert ("updated %s to the new examples/ktamv_macros.cfg (you had not changed it): "
            "[gcode_macro KTAMV_SAVE_OFFSETS] (changed)" % macros) in result.stdout

    # The user's own edit: kept, and the differing macros are named.
    mine = example.replace("[gcode_macro _KTAMV_APPLY_TOOL_OFFSET]\n",
                           "[gcode_macro MY_WIPE]\ngcode:\n    G1 X10\n\n"
                           "[gcode_macro _KTAMV_APPLY_TOOL_OFFSET]\n", 1)
    mine = mine.replace("KTAMV_GET_OFFSET", "KTAMV_GET_OFFSET REPEAT=3", 1)
    macros.write_text(mine)
    result = run_install(home)
    assert_ok(result)
    assert macros.read_text() == mine
    assert ("keeping your own %s: you edited it. It differs from "
            "examples/ktamv_macros.cfg in: [gcode_macro KTAMV_ALIGN_ALL_TOOLS] (changed), "
            "[gcode_macro MY_WIPE] (only in yours)" % macros) in result.stdout

    # Uninstall keeps the edited file and removes the checksum.
    result = run_install(home, "--uninstall")
    assert_ok(result)
    assert macros.read_text() == mine and not sums.exists()


def test_uninstall_warns_about_t_macros_that_apply_offsets(seeded_home):
    home = seeded_home
    printer_cfg, _, macros = config_paths(home)
    user_cfg = PRINTER_CFG.replace(
        "    ACTIVATE_EXTRUDER EXTRUDER=extruder\n",
        "    ACTIVATE_EXTRUDER EXTRUDER=extruder\n    _KTAMV_APPLY_TOOL_OFFSET\n")
    printer_cfg.write_text(user_cfg)
    assert_ok(run_install(home))
    result = run_install(home, "--uninstall")
    assert_ok(result)
    line = user_cfg.splitlines().index("    _KTAMV_APPLY_TOOL_OFFSET") + 1
    assert ("%s still calls _KTAMV_APPLY_TOOL_OFFSET (line %d), which came with "
            "ktamv_macros.cfg" % (printer_cfg, line)) in result.stderr
    assert "ktamv_macros.cfg" in result.stderr and "Unknown command" in result.stderr
    assert printer_cfg.read_text() == user_cfg
    assert not macros.exists()


def test_requirements_are_bounded_and_hold_what_the_suite_runs_on():
    """Every runtime requirement has an upper bound (Moonraker's update
    manager installs with -U), and the versions this suite runs on are inside."""
    from importlib.metadata import version
    from packaging.requirements import Requirement
    lines = [l for l in (REPO / "requirements.txt").read_text().splitlines()
             if l and not l.startswith(("#", "-"))]
    assert len(lines) == 3
    for line in lines:
        req = Requirement(line)
        assert any(spec.operator == "<" for spec in req.specifier), line
        installed = version(req.name)
        assert req.specifier.contains(installed), (line, installed)


MOONRAKER = REPO / ".venv-moonraker" / "bin" / "moonraker"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moonraker_webcams(conf_text, workdir):
    """Run real Moonraker (PyPI moonraker, .venv-moonraker) on conf_text, on a
    free local port, and return what its /server/webcams/list answers."""
    import json
    import time
    import urllib.request
    port = free_port()
    data = workdir / "moonraker-data"
    (data / "config").mkdir(parents=True)
    conf = data / "config" / "moonraker.conf"
    conf_text = conf_text.replace("host: 0.0.0.0\nport: 7125", "host: 127.0.0.1\nport: %d" % port)
    conf.write_text(conf_text + "\n[authorization]\ntrusted_clients:\n  127.0.0.0/8\n")
    # Its log goes to a file, read back for the assertion messages; an
    # unread pipe can block a chatty child.
    log_path = workdir / "moonraker.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(MOONRAKER), "-d", str(data), "-c", str(conf), "-n"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/server/webcams/list" % port, timeout=5) as r:
                    return json.load(r)["result"]["webcams"]
            except OSError:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "Moonraker did not answer:\n" + log_path.read_text()[-4000:]
                time.sleep(0.5)
    finally:
        # How fast Moonraker shuts down is not under test: on CI it once
        # outlived SIGTERM by 30 s, its offline update checks still running.
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_preview_port_adds_a_webcam_real_moonraker_lists(seeded_home, tmp_path):
    if not MOONRAKER.exists():
        pytest.skip("no .venv-moonraker (pip install moonraker); run test/setup.sh")
    home = seeded_home
    printer_cfg, moonraker_conf, _ = config_paths(home)
    config = printer_cfg.parent
    (config / "ktamv.cfg").write_text(
        "[ktamv]\nnozzle_cam_url: http://localhost/webcam/?action=snapshot\n"
        "preview_port: 8083\n")
    user_cfg = PRINTER_CFG.replace("[include mainsail.cfg]", "[include mainsail.cfg]\n[include ktamv.cfg]")
    printer_cfg.write_text(user_cfg)

    result = run_install(home)
    assert_ok(result)
    assert "added [webcam ktamv] (/webcam4/?action=stream)" in result.stdout
    conf_text = moonraker_conf.read_text()
    assert conf_text.count("[webcam ktamv]") == 1
    # Idempotent.
    assert_ok(run_install(home))
    assert moonraker_conf.read_text() == conf_text

    cams = moonraker_webcams(conf_text, tmp_path)
    ours = [c for c in cams if c["name"] == "ktamv"]
    assert len(ours) == 1, cams
    cam = ours[0]
    assert cam["stream_url"] == "/webcam4/?action=stream"
    assert cam["snapshot_url"] == "/webcam4/?action=snapshot"
    assert cam["service"] == "mjpegstreamer"
    assert cam["target_fps"] == 10
    assert cam["location"] == "printer"
    assert cam["source"] == "config"

    # Uninstall takes it out again, byte for byte.
    assert_ok(run_install(home, "--uninstall"))
    assert moonraker_conf.read_text() == MOONRAKER_CONF


def test_preview_on_an_unforwarded_local_port_gets_a_reason_not_a_webcam(seeded_home):
    home = seeded_home
    printer_cfg, moonraker_conf, _ = config_paths(home)
    printer_cfg.write_text(PRINTER_CFG.replace(
        "\n#*# <--", "\n[ktamv]\nnozzle_cam_url: http://x/\npreview_port: 9000\n\n#*# <--", 1))
    result = run_install(home)
    assert_ok(result)
    assert "[webcam" not in moonraker_conf.read_text()
    assert ("preview_port 9000 is not one nginx forwards (8080-8083) and preview_host "
            "127.0.0.1 is not reachable from other computers") in result.stderr


def test_both_macro_files_included_is_named(seeded_home):
    home = seeded_home
    printer_cfg, _, _ = config_paths(home)
    assert_ok(run_install(home))
    text = printer_cfg.read_text().replace("[include mainsail.cfg]",
                                           "[include mainsail.cfg]\n[include ktamv-macros.cfg]", 1)
    printer_cfg.write_text(text)
    result = run_install(home)
    assert_ok(result)
    assert printer_cfg.read_text() == text
    assert ("%s also includes the old kTAMV's ktamv-macros.cfg, which defines the "
            "same macros; delete that [include ktamv-macros.cfg] line" % printer_cfg) in result.stderr
