"""The "Guarantees" section of docs/guarantees.md and this folder agree: every test it names
exists, and every test module here is named there."""

from __future__ import annotations

import ast
import re

from reliability_support import ROOT

HERE = ROOT / "tests" / "reliability"


def named_tests() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    found, module = [], None
    for file, name in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", section):
        module = file or module
        assert module, f"{name} is named before any test file"
        found.append((module, name))
    return found


def test_every_test_the_guarantees_name_exists():
    named = named_tests()
    assert len(named) >= 20
    for module, name in named:
        tree = ast.parse((HERE / module).read_text())
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"docs/guarantees.md names {module}::{name}, which does not exist"


def test_every_reliability_module_is_named_in_the_guarantees():
    modules = {path.name for path in HERE.glob("test_*.py")} - {"test_guarantees_doc.py"}
    assert modules == {module for module, _ in named_tests()}
