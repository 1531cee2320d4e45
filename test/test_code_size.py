"""Klipper's extras stay small: no class over 300 lines and no function over
80 in ktamv.py and the helper, unless a
comment on its first line says why."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
FILES = [REPO / "ktamv.py"] + sorted(
    p for p in (REPO / "ktamv_helper").rglob("*.py")
    )


def test_no_class_over_300_and_no_function_over_80_lines():
    too_long = []
    for path in FILES:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            limit = {ast.ClassDef: 300, ast.FunctionDef: 80}.get(type(node))
            if limit is None:
                continue
            size = node.end_lineno - node.lineno + 1
            if size > limit and "longer because" not in lines[node.lineno - 1]:
                too_long.append("%s:%d %s (%d lines)" % (
                    path.relative_to(REPO), node.lineno, node.name, size))
    assert not too_long, too_long
