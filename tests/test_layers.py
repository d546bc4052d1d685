"""Arrows point down: library code never imports a command module, and training never imports the layers
built on it. Read from the source (every import, also those inside functions), so a new upward import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "gptlab"
COMMAND_MODULES = {"gptlab.cli", "gptlab.bench_command", "gptlab.experiments.commands", "gptlab.export.commands"}
# package -> packages it must not import (they are built on it)
NOT_BELOW = {
    "gptlab.train": ("gptlab.experiments", "gptlab.export", "gptlab.bench", "gptlab.demo"),
    "gptlab.bench": ("gptlab.experiments", "gptlab.export", "gptlab.demo"),
    "gptlab.config": ("gptlab.train", "gptlab.experiments", "gptlab.export", "gptlab.bench"),
    "gptlab.rundir": ("gptlab.train", "gptlab.experiments", "gptlab.export", "gptlab.bench"),
    "gptlab.model": ("gptlab.train", "gptlab.experiments", "gptlab.export", "gptlab.bench", "gptlab.data"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from gptlab import bench`
    return {name for name in found if name.startswith("gptlab")}


MODULES = {_module_name(path): _imports(path) for path in sorted(SOURCE.rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_cli_imports_command_modules(module):
    if module in ("gptlab.cli", "gptlab.__main__"):  # the command line itself, and `python -m gptlab`
        return
    assert not MODULES[module] & COMMAND_MODULES, (
        f"{module} imports a command module: {sorted(MODULES[module] & COMMAND_MODULES)}"
    )


@pytest.mark.parametrize("package", sorted(NOT_BELOW))
def test_lower_layers_do_not_import_higher_ones(package):
    upward = sorted(
        f"{module} -> {name}"
        for module, names in MODULES.items()
        if _within(module, package)
        for name in names
        for higher in NOT_BELOW[package]
        if _within(name, higher)
    )
    assert not upward, upward


def test_the_scan_sees_the_package():
    assert {"gptlab.cli", "gptlab.train.loop", "gptlab.bench.timing", "gptlab.rundir"} <= set(MODULES)
    assert "gptlab.config" in MODULES["gptlab.train.loop"]
