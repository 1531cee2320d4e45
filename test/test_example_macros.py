"""The example macros, run in real Klippy (batch mode) against the sim camera.

examples/ktamv_macros.cfg is what install.sh copies into a printer's config
folder, so it must load, align every tool, store offsets that match the
simulated truth, and apply the stored offset when a tool is selected.
"""

import ast
import configparser

import pytest

from klippy_harness import (HELPER_PYTHON, KLIPPY, REPO, printer_config,
                            run_klippy)

pytestmark = pytest.mark.skipif(
    not KLIPPY.exists() or not HELPER_PYTHON.exists(),
    reason="needs .venv and .venv-klippy (test/setup.sh)")

SIM_URL = ("sim://?seed=11&tools=3&offset_range=0.6&camera_x=150&camera_y=150"
           "&backlash=0.05&kinematics=corexy")
MACROS = REPO / "examples" / "ktamv_macros.cfg"


def ktamv_config(tmp_path, tool_macros):
    return printer_config("""
[ktamv]
nozzle_cam_url: %s
helper_python: %s
camera_position: 150, 150
tool_status: gcode_macro _SIM_TOOL.name

[gcode_macro _SIM_TOOL]
variable_name: "extruder"
gcode:

[save_variables]
filename: %s

[include %s]
%s
""" % (SIM_URL, HELPER_PYTHON, tmp_path / "variables.cfg", MACROS, tool_macros),
    )


def tool_macro(number):
    name = "extruder" if number == 0 else "extruder%d" % number
    return """
[gcode_macro T%d]
gcode:
    SET_GCODE_VARIABLE MACRO=_SIM_TOOL VARIABLE=name VALUE='"%s"'
    _KTAMV_APPLY_TOOL_OFFSET
""" % (number, name)


def truth_offsets():
    from ktamv_helper.cameras.sim import SimCamera
    camera = SimCamera(SIM_URL)
    try:
        return camera.truth()["tools"]
    finally:
        camera.close()


def saved_variables(path):
    parser = configparser.ConfigParser()
    parser.read(path)
    return {k: ast.literal_eval(v) for k, v in parser["Variables"].items()}


def test_align_all_tools_stores_and_applies_offsets(tmp_path):
    macros = "".join(tool_macro(n) for n in range(3))
    # After the alignment, select T1 and print where G-code X0 Y0 puts the
    # toolhead: the applied offset.
    gcode = "\n".join([
        "G28",
        "KTAMV_ALIGN_ALL_TOOLS TOOLS=0,1,2 VERIFY=1",
        "T1",
        "GET_POSITION",
    ]) + "\n"
    result = run_klippy(tmp_path / "run", ktamv_config(tmp_path, macros), gcode,
                        timeout=300)
    assert result.returncode == 0, result.tail()
    assert "kTAMV offsets against extruder" in result.text

    truth = truth_offsets()
    saved = saved_variables(tmp_path / "variables.cfg")
    assert saved["ktamv_offset_extruder"] == [0.0, 0.0]
    for n, name in ((1, "extruder1"), (2, "extruder2")):
        stored = saved["ktamv_offset_" + name]
        expected = truth[str(n)] if isinstance(truth, dict) else truth[n]
        assert abs(stored[0] - expected[0]) < 0.005, (name, stored, expected)
        assert abs(stored[1] - expected[1]) < 0.005, (name, stored, expected)

    # VERIFY=1: each tool re-centred with the offset its T macro applied.
    assert_verified(result, ["extruder", "extruder1", "extruder2"])
    assert result.find(r"kTAMV \[(\d)/6\] T\d: ") == [
        "1", "2", "3", "4", "5", "6"]

    # _KTAMV_APPLY_TOOL_OFFSET in T1 set T1's stored offset.
    status = [line for line in result.lines if "gcode homing:" in line]
    assert status, result.tail()
    x, y = [float(v.split(":")[1]) for v in status[-1].split("gcode homing:")[1].split()[:2]]
    assert abs(x - saved["ktamv_offset_extruder1"][0]) < 1e-3
    assert abs(y - saved["ktamv_offset_extruder1"][1]) < 1e-3


def assert_verified(result, tools):
    """The VERIFY table lists ``tools``, each within 0.005 mm and ok."""
    rows = result.find(r"^  (\S+): X[-+][\d.]+ Y[-+][\d.]+ = ([\d.]+) "
                       r"(ok|FLAGGED)$")
    assert sorted(r[0] for r in rows) == sorted(tools), result.tail()
    for tool, distance, verdict in rows:
        assert float(distance) <= 0.005 and verdict == "ok", (tool, distance)
    assert "kTAMV: every offset verified." in result.text
    # The non-reference tools really had an offset in force.
    offsets = result.find(r"verify (\S+) with G-code offset X([-\d.]+) "
                          r"Y([-\d.]+):")
    assert max(abs(float(x)) + abs(float(y)) for _, x, y in offsets) > 0.02


def test_macros_explain_missing_tools_and_homing(tmp_path):
    config = ktamv_config(tmp_path, tool_macro(0))
    result = run_klippy(tmp_path / "unhomed", config, "KTAMV_ALIGN_ALL_TOOLS TOOLS=0,1\n",
                        timeout=120)
    assert result.returncode != 0
    assert "there is no T1 macro" in result.text
    result = run_klippy(tmp_path / "no-home", ktamv_config(tmp_path, tool_macro(0) + tool_macro(1)),
                        "KTAMV_ALIGN_ALL_TOOLS TOOLS=0,1\n", timeout=120)
    assert result.returncode != 0
    assert "home the printer (G28) first" in result.text


def link_fake(module):
    """Link test/fake_<module>.py into Klippy's extras as <module>.py."""
    import os
    from klippy_harness import klippy_extras_dir
    source = (REPO / "test" / ("fake_%s.py" % module)).resolve()
    link = klippy_extras_dir() / ("%s.py" % module)
    if link.is_symlink() and os.readlink(link) == str(source):
        return
    tmp = link.with_name("%s.py.tmp%d" % (module, os.getpid()))
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(source, tmp)
    os.replace(tmp, link)


@pytest.mark.parametrize("tool_status", ["toolchanger.tool", None])
def test_toolchanger_macros_stage_tool_offsets(tmp_path, tool_status):
    """KTAMV_ALIGN_TOOLCHANGER then KTAMV_SAVE_TOOLCHANGER_OFFSETS stage
    gcode_x/y_offset = the reference tool's offset + the measured one, with
    kTAMV's own tool names (T1) or those of tool_status (tool T1)."""
    link_fake("toolchanger")
    reference = (0.1, -0.2)
    config = printer_config("""
[ktamv]
nozzle_cam_url: %s
helper_python: %s
camera_position: 150, 150
%s

[toolchanger]
tool_count: 3
reference_offset: %f, %f

[include %s]

[gcode_macro _PRINT_PENDING]
gcode:
    {action_respond_info("PENDING " ~ (printer.configfile.save_config_pending_items|tojson))}
""" % (SIM_URL, HELPER_PYTHON,
       "tool_status: %s" % tool_status if tool_status else "",
       reference[0], reference[1], REPO / "examples" / "toolchanger_macros.cfg"))
    gcode = "G28\nKTAMV_ALIGN_TOOLCHANGER\nKTAMV_SAVE_TOOLCHANGER_OFFSETS\n_PRINT_PENDING\n"
    result = run_klippy(tmp_path / "run", config, gcode, timeout=300)
    assert result.returncode == 0, result.tail()
    assert "kTAMV: tool offsets against tool T0" in result.text
    import json
    pending = json.loads(result.find(r"^PENDING (.*)$")[-1])
    truth = truth_offsets()
    assert "tool T0" not in pending  # the reference keeps its offset
    for n in (1, 2):
        section = pending["tool T%d" % n]
        expected = truth[str(n)] if isinstance(truth, dict) else truth[n]
        assert abs(float(section["gcode_x_offset"]) - (reference[0] + expected[0])) < 0.005
        assert abs(float(section["gcode_y_offset"]) - (reference[1] + expected[1])) < 0.005


def test_idex_and_toolchanger_macros_load(tmp_path):
    """Every example macro file loads in Klippy together (templates compile,
    no duplicate sections), and each macro explains a missing prerequisite."""
    config = printer_config("""
[ktamv]
nozzle_cam_url: %s
helper_python: %s

[include %s]
[include %s]
[include %s]
""" % (SIM_URL, HELPER_PYTHON, MACROS, REPO / "examples" / "idex_macros.cfg",
       REPO / "examples" / "toolchanger_macros.cfg"))
    result = run_klippy(tmp_path / "run", config, "KTAMV_ALIGN_TOOLCHANGER\n",
                        timeout=120)
    assert result.returncode != 0
    assert "there is no [toolchanger]" in result.text
    # T0/T1 come from idex_macros.cfg; without homing the alignment refuses.
    result = run_klippy(tmp_path / "run2", config, "KTAMV_ALIGN_ALL_TOOLS TOOLS=0,1\n",
                        timeout=120)
    assert result.returncode != 0
    assert "home the printer (G28) first" in result.text


def test_idex_offsets_are_keyed_by_carriage(tmp_path):
    """On IDEX kTAMV names the nozzle after the PRIMARY carriage; the macros
    store and apply the offsets under the same names (dual_carriage is a
    stand-in: the sim printer has no IDEX kinematics)."""
    link_fake("dual_carriage")
    macros = "".join("""
[gcode_macro T%d]
gcode:
    SET_DUAL_CARRIAGE CARRIAGE=%d
    _KTAMV_APPLY_TOOL_OFFSET
""" % (n, n) for n in (0, 1))
    config = printer_config("""
[ktamv]
nozzle_cam_url: %s
helper_python: %s
camera_position: 150, 150

[dual_carriage]

[save_variables]
filename: %s

[include %s]
%s
""" % (SIM_URL, HELPER_PYTHON, tmp_path / "variables.cfg", MACROS, macros))
    gcode = "G28\nKTAMV_ALIGN_ALL_TOOLS TOOLS=0,1 VERIFY=1\nT1\nGET_POSITION\n"
    result = run_klippy(tmp_path / "run", config, gcode, timeout=300)
    assert result.returncode == 0, result.tail()
    assert_verified(result, ["carriage_0", "carriage_1"])
    saved = saved_variables(tmp_path / "variables.cfg")
    assert saved["ktamv_offset_carriage_0"] == [0.0, 0.0]
    expected = truth_offsets()
    expected = expected["1"] if isinstance(expected, dict) else expected[1]
    stored = saved["ktamv_offset_carriage_1"]
    assert abs(stored[0] - expected[0]) < 0.005 and abs(stored[1] - expected[1]) < 0.005
    status = [line for line in result.lines if "gcode homing:" in line]
    x, y = [float(v.split(":")[1]) for v in status[-1].split("gcode homing:")[1].split()[:2]]
    assert abs(x - stored[0]) < 1e-3 and abs(y - stored[1]) < 1e-3


def test_verify_all_tools_after_a_restart_checks_the_stored_offsets(tmp_path):
    """Align and store, SAVE_CONFIG (Klipper restarts: origin gone), then
    KTAMV_VERIFY_ALL_TOOLS sets a new origin and re-centres each tool with
    the offset its T macro applies from [save_variables]."""
    macros = "".join(tool_macro(n) for n in range(2))
    gcode = ["G28\nKTAMV_ALIGN_ALL_TOOLS TOOLS=0,1\nSAVE_CONFIG",
             # KTAMV_TEST first waits for the new helper: moves made before
             # it is ready reach the sim:// camera without their backlash
             # (a simulation bookkeeping issue, reported; not kTAMV's
             # measurement), which would fake a 0.035 mm residual.
             "KTAMV_TEST\nG28\nKTAMV_VERIFY_ALL_TOOLS TOOLS=0,1\n"]
    result = run_klippy(tmp_path / "run", ktamv_config(tmp_path, macros), gcode,
                        timeout=300)
    assert result.returncode == 0, result.tail()
    after = result.text[result.text.rindex("Restarting printer"):] \
        if "Restarting printer" in result.text else result.text
    assert "origin set to" in after  # a new origin after the restart
    assert_verified(result, ["extruder", "extruder1"])
