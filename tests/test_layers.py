"""Arrows point down. Every module of gptlab stands on one floor of `FLOORS`; it imports only modules of its own
folder or of lower floors, never a command module (only the command line registers them), and no import, at
module level or at the level of folders, closes a circle. Read from the source, every import counted: those
inside functions and under `TYPE_CHECKING` too, since an import that dodges a circle is still a circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "gptlab"

# The floors, bottom to top; an entry is a module or a package (with everything in it, unless a longer entry
# names a part of it). Why each floor stands where it does: docs/architecture.md, "Layers".
FLOORS: tuple[tuple[str, ...], ...] = (
    ("gptlab.cpu_kernels",),  # the CPU matmul kernel choice, below the model and the chunked loss that use it
    (
        "gptlab.errors",
        "gptlab.words",
        "gptlab.click_types",
        "gptlab.linear_cross_entropy",
        "gptlab.version",
        "gptlab.corpora",  # the embedded corpus files, no code
        "gptlab.hub",  # huggingface_hub's timeouts, for data/ and export/
    ),
    ("gptlab.files", "gptlab.tokenizer", "gptlab.locks"),  # locks: one writer at a time (rundir names the run's)
    ("gptlab.rundir",),  # the run directory's file names
    ("gptlab.notify",),  # below config, which names train.json's channels from its registry; the loop sends
    ("gptlab.config",),  # model.json, train.json and resolved_config.json, read by rundir's names
    ("gptlab.model_moe", "gptlab.data"),  # the mixture-of-experts layer, which the model's blocks hold
    ("gptlab.model",),
    ("gptlab.weights", "gptlab.flops", "gptlab.presets", "gptlab.random_streams"),
    ("gptlab.runtime",),  # precision, checkpoints, opening a trained run: what training and evaluation share
    ("gptlab.evaluate",),
    ("gptlab.train",),  # validates with evaluate's loss, tells notify its events
    ("gptlab.experiments", "gptlab.export", "gptlab.bench", "gptlab.cloud"),
    ("gptlab", "gptlab.api", "gptlab.demo"),  # one library function per operation; `gptlab` is the package's face
    (  # the sub-commands: parse arguments, call one function, print
        "gptlab.bench_command",
        "gptlab.experiments.commands",
        "gptlab.export.commands",
        "gptlab.data.commands",
        "gptlab.notify.commands",
        "gptlab.cloud.commands",
    ),
    ("gptlab.cli",),  # registers the sub-commands
    ("gptlab.__main__",),  # python -m gptlab
)
COMMAND_MODULES = {*FLOORS[-3], "gptlab.cli"}
# Modules that may import a command module: the command line, which registers them, and `python -m gptlab`.
REGISTERS_COMMANDS = {"gptlab.cli", "gptlab.__main__"}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path) -> dict[str, set[str]]:
    """Each module under the package folder `root` -> the modules of that package it imports, anywhere in it."""
    paths = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    package = root.name

    def known(name: str) -> str:
        while name not in paths and "." in name:  # `from gptlab.config import RunConfig` -> gptlab.config
            name = name.rpartition(".")[0]
        return name

    modules = {}
    for module, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                # `from gptlab import bench` imports the module gptlab.bench; `from gptlab import X` the face
                found |= {known(f"{base}.{alias.name}") for alias in node.names}
        modules[module] = {name for name in found if name.split(".")[0] == package and name != module}
    return modules


def floor_of(module: str, floors: Sequence[Sequence[str]]) -> int:
    """The floor of the longest entry that is the module or a package holding it."""
    matches = [
        (len(entry), number)
        for number, entries in enumerate(floors)
        for entry in entries
        # a top-level name (`gptlab`) is the package's face, its __init__.py, and holds nothing else
        if module == entry or ("." in entry and module.startswith(entry + "."))
    ]
    if not matches:
        raise KeyError(f"{module} stands on no floor: add it to FLOORS")
    return max(matches)[1]


def room_of(module: str) -> str:
    """The folder or top-level module a module belongs to: gptlab.train.loop -> gptlab.train."""
    return ".".join(module.split(".")[:2])


def upward_imports(modules: Mapping[str, Iterable[str]], floors: Sequence[Sequence[str]]) -> list[str]:
    """Imports of a higher floor, or of another folder on the same floor."""
    found = []
    for module, names in sorted(modules.items()):
        for name in sorted(names):
            ours, theirs = floor_of(module, floors), floor_of(name, floors)
            if theirs > ours or (theirs == ours and room_of(name) != room_of(module)):
                found.append(f"{module} (floor {ours + 1}) -> {name} (floor {theirs + 1})")
    return found


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted, or a node importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def room_graph(modules: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Imports between folders and top-level modules, as the import graph draws them at the top level."""
    rooms: dict[str, set[str]] = {}
    for module, names in modules.items():
        rooms.setdefault(room_of(module), set()).update(room_of(name) for name in names)
    return {room: targets - {room} for room, targets in rooms.items()}


MODULES = read_imports(SOURCE)


def test_every_module_stands_on_a_floor():
    unplaced = []
    for module in MODULES:
        try:
            floor_of(module, FLOORS)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"add these to FLOORS: {unplaced}"
    named = {entry for entries in FLOORS for entry in entries}
    assert not named - set(MODULES), f"FLOORS names modules that do not exist: {sorted(named - set(MODULES))}"
    assert {room_of(module) for module in MODULES} <= named, "every folder and top-level module is on a floor"


def test_no_module_imports_upward():
    assert not upward_imports(MODULES, FLOORS)


def test_no_circle_between_modules():
    assert not circles(MODULES)


def test_no_circle_between_folders():
    assert not circles(room_graph(MODULES))


def test_only_the_cli_imports_command_modules():
    importers = sorted(
        f"{module} -> {name}"
        for module, names in MODULES.items()
        if module not in REGISTERS_COMMANDS
        for name in names & COMMAND_MODULES
    )
    assert not importers


def test_the_command_modules_are_the_ones_that_define_commands():
    def defines_commands(module: str) -> bool:
        path = SOURCE.parent / (module.replace(".", "/") + ".py")
        return path.is_file() and re.search(r"^@\w+\.(command|group)\(", path.read_text(encoding="utf-8"), re.M)

    assert {module for module in MODULES if defines_commands(module)} == COMMAND_MODULES


# --- the check itself can fail ----------------------------------------------------------------------------


def test_the_scan_reads_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("VALUE = 1\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text("from ..low import VALUE\n")
    (package / "high.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.low\n"
        "from pkg import high\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub.deep import VALUE\n"
        "def late():\n"
        "    from pkg.sub import deep\n"
        "    import os\n"
    )
    imports = read_imports(package)
    assert imports["pkg.a"] == {"pkg.low", "pkg.high", "pkg.sub.deep"}
    assert imports["pkg.sub.deep"] == {"pkg.low"}


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from pkg.b import x\n")
    (package / "b.py").write_text("def f():\n    import pkg.a\n")  # inside a function: still a circle
    (package / "c.py").write_text("def f():\n    from pkg import top\n")
    (package / "top.py").write_text("")
    modules = read_imports(package)
    assert circles(modules) == [["pkg.a", "pkg.b"]]
    floors = (("pkg.b",), ("pkg.a", "pkg.c"), ("pkg.top",))
    assert upward_imports(modules, floors) == [
        "pkg.b (floor 1) -> pkg.a (floor 2)",
        "pkg.c (floor 2) -> pkg.top (floor 3)",
    ]
    assert upward_imports({"pkg.x.one": {"pkg.y.two"}}, (("pkg.x", "pkg.y"),)) == [
        "pkg.x.one (floor 1) -> pkg.y.two (floor 1)"
    ]  # two folders on one floor stand side by side
    assert circles(room_graph({"pkg.x.one": {"pkg.y.two"}, "pkg.y.two": {"pkg.x.three"}})) == [["pkg.x", "pkg.y"]]
    with pytest.raises(KeyError, match="stands on no floor"):
        floor_of("pkg.elsewhere", floors)


def test_the_scan_sees_the_package():
    assert {"gptlab.cli", "gptlab.train.loop", "gptlab.bench.timing", "gptlab.rundir"} <= set(MODULES)
    assert "gptlab.config" in MODULES["gptlab.train.loop"]
    assert "gptlab.train.loop" in MODULES["gptlab.api"]  # imported inside a function


# --- one owner per rule ---------------------------------------------------------------------------------------


def test_only_rundir_spells_a_run_directory_file_name():
    import gptlab.rundir as rundir

    file_names = {
        value
        for name, value in vars(rundir).items()
        if name.isupper() and isinstance(value, str) and "." in value  # model.json, metrics.jsonl, loss-chart.png
    }
    spelled = sorted(
        f"{path.relative_to(SOURCE)}:{node.lineno}: {node.value}"
        for path in SOURCE.rglob("*.py")
        if path.name != "rundir.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in file_names
    )
    assert file_names >= {"model.json", "train.json", "summary.json", "loss-chart.png"}
    assert not spelled, "use gptlab.rundir's names: " + ", ".join(spelled)
