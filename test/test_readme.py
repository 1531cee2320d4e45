"""README.md and examples/printer.cfg against ktamv.py: every option with its
default and bounds, every command with its parameters, every status field.

The extra is read with ``ast`` (it imports nothing from Klippy at module
level but is not meant to be imported outside Klippy)."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
TREE = ast.parse((REPO / "ktamv.py").read_text())
KTAMV_CLASS = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == "Ktamv")
NUMBER = r"-?\d+(?:\.\d+)?"


def _shared_limit(name):
    """The value of ktamv.py's module-level ``NAME = _LIMITS.NAME`` (a limit
    both halves read from ktamv_helper/limits.py), or None."""
    from ktamv_helper import limits
    for node in TREE.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == name
                and isinstance(node.value, ast.Attribute)
                and getattr(node.value.value, "id", None) == "_LIMITS"):
            return getattr(limits, node.value.attr)
    return None


def literal(node):
    if isinstance(node, ast.Name):
        return _shared_limit(node.id)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def config_options():
    """{option: (default, {bound keyword: value})} from config.get*() calls."""
    options = {}
    for node in ast.walk(TREE):  # KtamvOptions reads them
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "config"
                and node.func.attr.startswith("get") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            default = literal(node.args[1]) if len(node.args) > 1 else "required"
            bounds = {k.arg: literal(k.value) for k in node.keywords
                      if k.arg in ("minval", "maxval", "above", "below")}
            options[node.args[0].value] = (default, bounds)
        # Options read in a loop over their names, e.g. the ignored old ones.
        if isinstance(node, ast.comprehension) and isinstance(node.iter, ast.Tuple):
            names = [literal(e) for e in node.iter.elts]
            if all(isinstance(n, str) for n in names):
                for n in names:
                    options.setdefault(n, (None, {}))
    return options


def section(title):
    match = re.search(r"^## %s\n(.*?)(?=^## )" % re.escape(title), README, re.S | re.M)
    assert match, "README has no section %r" % title
    return match.group(1)


def table_rows(text):
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows[1:]  # without the header


def readme_options():
    rows = {}
    for cells in table_rows(section("Configuration")):
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = cells
    return rows


def test_every_option_is_documented_with_its_default_and_bounds():
    code = config_options()
    documented = readme_options()
    assert set(code) == set(documented)
    for name, (default, bounds) in code.items():
        cells = documented[name]
        if default == "required":
            assert "required" in cells[1], name
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert [float(v) for v in re.findall(NUMBER, cells[1])] == [float(default)], name
        for value in bounds.values():
            assert float(value) in [float(v) for v in re.findall(NUMBER, cells[2])], (name, value)


def command_methods():
    return {n.name[len("cmd_"):]: n for n in KTAMV_CLASS.body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_KTAMV_")}


def registered_commands():
    """Names given literally to gcode.register_command (so grep finds them),
    each with its own cmd_X method and cmd_X_help."""
    names = set()
    for node in ast.walk(KTAMV_CLASS):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "register_command"):
            name = literal(node.args[0])
            assert isinstance(name, str), ast.dump(node.args[0])
            assert node.args[1].attr == "cmd_" + name
            assert [k.value.attr for k in node.keywords
                    if k.arg == "desc"] == ["cmd_%s_help" % name]
            names.add(name)
    assert names, "no register_command calls in ktamv.py"
    return names


def test_every_command_and_parameter_is_documented():
    rows = table_rows(section("Commands"))
    documented = {}
    for cells in rows:
        for name in re.findall(r"`(KTAMV_\w+)`", cells[0]):
            documented[name] = cells[1]
    assert registered_commands() == set(documented)
    for name, method in command_methods().items():
        params = {literal(n.args[0]) for n in ast.walk(method)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr.startswith("get") and isinstance(n.func.value, ast.Name)
                  and n.func.value.id == "gcmd" and n.args}
        for param in params:
            assert "%s=" % param in documented[name], (name, param)


def test_every_status_field_is_documented():
    # Ktamv.get_status adds its fields to those of OffsetBook.get_status.
    fields = set()
    for function in ast.walk(TREE):
        if isinstance(function, ast.FunctionDef) and function.name == "get_status":
            for node in ast.walk(function):
                if isinstance(node, ast.Dict):
                    fields.update(literal(k) for k in node.keys)
    assert "origin" in fields and "helper_state" in fields
    documented = set()
    for cells in table_rows(section("Status for macros (`printer.ktamv`)")):
        documented.update(re.findall(r"`(\w+)`", cells[0]))
    assert fields == documented


@pytest.mark.parametrize("example", ["printer.cfg"])
def test_example_config_uses_real_options(example):
    text = (REPO / "examples" / example).read_text()
    used = set(re.findall(r"^#?(\w+):", text, re.M))
    assert used and used <= set(config_options()), used - set(config_options())


def test_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (REPO / target).exists(), target
