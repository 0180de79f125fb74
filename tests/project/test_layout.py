"""The house keeps its shape: rooms import downward only, no import circles, no oversized modules or functions.

The rules are the ones docs/architecture.md draws (and ../shared/DESIGN.md, "Rules of the house"):

* only ``pilot/cli/`` imports click, and nothing imports ``pilot.cli``;
* every arrow between rooms is one of :data:`ALLOWED` (each room lists the rooms it may import);
* ``pilot/worker/`` imports nothing else of ``pilot`` but the standard-library leaves ``pilot.redact``,
  ``pilot.ssh_route`` and ``pilot.fit`` and the rerun protocol it shares with the manager,
  ``pilot.rerun_protocol`` (start-up inside a batch job stays cheap), and
  ``queue_adapters/`` is pure (no transport, no database, no FireWorks);
* no module imports itself back through any chain (lazy imports inside functions count: a circle is a
  circle, whether Python notices it at import time or not; ``if TYPE_CHECKING:`` imports do not count);
* no module over :data:`MAX_MODULE_LINES`, no function over :data:`MAX_FUNCTION_LINES` lines, outside
  :data:`EXEMPT`.

The import graph is read from the source with :mod:`ast` (no module is imported), so the test sees lazy
imports too and cannot be fooled by ``sys.modules`` state.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomllib

from tests.helpers import REPO

#: The packages whose imports are checked.
CODE_ROOTS = ("pilot", "queue_adapters", "tasks")
#: Trees whose sizes are checked (tests and benchmarks are code too).
SIZE_ROOTS = ("pilot", "queue_adapters", "tasks", "benchmarks", "tests")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80

#: Paths (relative to the repository) exempt from the size limits, and why.
EXEMPT = {
    "tests/fixtures": "data: recorded scheduler outputs and LaunchPad dumps, and the script that captured them",
}

#: Rooms: the longest matching module prefix names a module's room.
ROOMS = (
    "pilot.cli", "pilot.dashboard", "pilot.demo", "pilot.status", "pilot.report", "pilot.checks", "pilot.manager",
    "pilot.notify", "pilot.render", "pilot.transport", "pilot.config", "pilot.launchpad", "pilot.localsched",
    "pilot.worker", "pilot.isotime", "pilot.configdir", "pilot.redact", "pilot.ssh_route", "pilot.rerun_protocol",
    "pilot.fit",
    "queue_adapters",
    "tasks",
)

#: room -> the other rooms it may import. Arrows point down: cli -> demo -> report/manager (status and checks
#: are the CLI's) -> render/transport/config/launchpad/localsched -> queue_adapters.
#: The leaves (standard library only, cheap) may be imported by the rooms that name them: ``pilot`` (the root
#: package, __version__), ``pilot.isotime`` (how times are written for scripts), ``pilot.configdir`` (which config
#: dir a command uses, how a hint names it, private files), ``pilot.redact`` (no password in any output) and
#: ``pilot.ssh_route`` (the ssh route to the LaunchPad: validated by the config, consumed by the worker) and
#: ``pilot.fit`` (when a Firework fits a pilot: the worker's pull, the manager's demand and status share it).
LEAVES = {"pilot", "pilot.isotime", "pilot.configdir", "pilot.redact", "pilot.ssh_route", "pilot.fit"}
#: ``pilot.rerun_protocol`` is a leaf too, but not standard library only: the compare-and-set rerun under
#: FireWorks' workflow lock that the manager and the worker (which may not import the manager) both use.
PROTOCOL = "pilot.rerun_protocol"
ALLOWED: dict[str, set[str]] = {
    "pilot.cli": {"pilot.demo", "pilot.status", "pilot.report", "pilot.checks", "pilot.manager", "pilot.render",
                  "pilot.transport", "pilot.config", "pilot.launchpad", "pilot.localsched", "pilot.worker",
                  "pilot.notify", "pilot.dashboard", "queue_adapters", "tasks"} | LEAVES,
    #: the web dashboard (issue 22): the views of status and report, the manager's own actions
    "pilot.dashboard": {"pilot.status", "pilot.report", "pilot.manager", "pilot.config", "pilot.launchpad",
                        "pilot.transport"} | LEAVES,
    "pilot.demo": {"pilot.report", "pilot.manager", "pilot.transport", "pilot.config", "pilot.launchpad",
                   "pilot.localsched", "tasks", "pilot", "pilot.configdir", "pilot.redact"},
    "pilot.status": {"pilot.manager", "pilot.checks", "pilot.config", "pilot.launchpad", "pilot.notify"} | LEAVES,
    "pilot.report": {"pilot.manager", "pilot.config", "pilot.launchpad"} | LEAVES,
    "pilot.checks": {"pilot.render", "pilot.transport", "pilot.config", "pilot.launchpad", "queue_adapters",
                     "pilot", "pilot.configdir", "pilot.redact"},
    "pilot.manager": {"pilot.render", "pilot.transport", "pilot.config", "pilot.launchpad", "queue_adapters",
                      "pilot", "pilot.configdir", "pilot.redact", "pilot.fit", PROTOCOL, "pilot.notify"},
    #: notifications (issue 21): the manager calls them; they read the config and the LaunchPad's documents
    "pilot.notify": {"pilot.config", "pilot.launchpad"} | LEAVES,
    "pilot.render": {"pilot.config", "pilot"},
    "pilot.transport": {"queue_adapters"},
    "pilot.config": {"pilot.configdir", "pilot.ssh_route"},
    "pilot.launchpad": {"pilot.config", "pilot", "pilot.configdir", "pilot.redact"},
    "pilot.localsched": set(),
    "pilot.worker": {"pilot.redact", "pilot.ssh_route", "pilot.fit", PROTOCOL},  # leaves: it loads nothing heavy
    PROTOCOL: set(),
    "pilot.isotime": set(),
    "pilot.configdir": set(),
    "pilot.redact": set(),
    "pilot.ssh_route": set(),
    "pilot.fit": set(),
    "pilot": set(),
    "queue_adapters": set(),
    "tasks": {"pilot.transport"},
}

#: Third-party packages a room must not import (what keeps it pure or cheap).
_THIRD_PARTY = {"paramiko", "pymongo", "bson", "fireworks", "pydantic", "yaml", "jinja2", "click", "mongomock"}
FORBIDDEN_LIBRARIES: dict[str, set[str]] = {
    **{leaf: _THIRD_PARTY for leaf in LEAVES},  # the leaves are standard library only
    "queue_adapters": {"paramiko", "pymongo", "fireworks", "subprocess", "socket", "click"},
    "pilot.worker": {"paramiko", "pydantic", "jinja2", "click"},
    PROTOCOL: {"paramiko", "pydantic", "jinja2", "click", "yaml", "mongomock"},
}


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module (or the package, for ``from pkg import name``)
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def code_modules() -> dict[str, Path]:
    return {module_name(p): p for root in CODE_ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in [child, *_walk_runtime(child)])
            continue
        yield node
        yield from _walk_runtime(node)


def _resolve_from(name: str, node: ast.ImportFrom, known: dict[str, Path]) -> str:
    base = node.module or ""
    if node.level:
        pkg = name.split(".") if known[name].name == "__init__.py" else name.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    return base


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The imports of one module: ``from pkg import mod`` points at ``pkg.mod`` when that is a module."""
    out: list[Import] = []
    for node in _walk_runtime(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(name, node, known)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(name, sub if sub in known else base, node.lineno))
    return out


def room_of(module: str) -> str | None:
    if module == "pilot.__main__":
        return "pilot.cli"  # ``python -m pilot`` is the command line's other door
    if module == "pilot":
        return "pilot"      # the root package: ``__version__`` only
    for room in ROOMS:  # longest prefixes first
        if module == room or module.startswith(room + "."):
            return room
    return None


@functools.cache
def import_graph() -> dict[str, list[Import]]:
    known = code_modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_only_the_cli_imports_click_and_nothing_imports_the_cli() -> None:
    graph = import_graph()
    bad = [f"{i.source}:{i.line} imports {i.target}" for imps in graph.values() for i in imps
           if room_of(i.source) != "pilot.cli"
           and (i.target.split(".")[0] == "click" or room_of(i.target) == "pilot.cli")]
    assert not bad, "only pilot/cli/ may import click or pilot.cli:\n" + "\n".join(bad)


def test_every_module_is_in_a_room() -> None:
    """A new top-level module must be given a room (and its arrows), not slip in as part of the root package."""
    homeless = sorted(name for name in import_graph() if room_of(name) is None)
    assert not homeless, f"modules in no room of ROOMS (add them, with their arrows in ALLOWED): {homeless}"


def test_every_arrow_between_rooms_is_allowed() -> None:
    graph = import_graph()
    bad = []
    for imps in graph.values():
        for i in imps:
            src, dst = room_of(i.source), room_of(i.target)
            if dst is None or src == dst:
                continue
            if src is None or dst not in ALLOWED[src]:
                bad.append(f"{i.source}:{i.line} imports {i.target} ({src} -> {dst} is not an allowed arrow)")
    assert not bad, "\n".join(bad)


def test_pure_and_cheap_rooms_stay_so() -> None:
    graph = import_graph()
    bad = [f"{i.source}:{i.line} imports {i.target}" for imps in graph.values() for i in imps
           for room, libs in FORBIDDEN_LIBRARIES.items()
           if room_of(i.source) == room and i.target.split(".")[0] in libs]
    assert not bad, "\n".join(bad)


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_circle() -> None:
    graph = import_graph()
    edges = {name: {i.target for i in imps if i.target in graph and i.target != name}
             for name, imps in graph.items()}
    cycle = _find_cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    """The circle the issue found (segment -> workflow -> staging -> segment) is caught; a DAG is not."""
    circle = {"tasks.segment": {"tasks.workflow"}, "tasks.workflow": {"tasks.staging"},
              "tasks.staging": {"tasks.segment"}}
    assert _find_cycle(circle) == ["tasks.segment", "tasks.workflow", "tasks.staging", "tasks.segment"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _exempt(path: Path) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == e or rel.startswith(e + "/") for e in EXEMPT)


def _sized_files() -> Iterator[Path]:
    for root in SIZE_ROOTS:
        yield from (p for p in sorted((REPO / root).rglob("*.py")) if not _exempt(p))


def test_no_module_over_the_limit() -> None:
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in _sized_files()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(big)


def test_no_function_over_the_limit() -> None:
    long = []
    for p in _sized_files():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def test_every_package_is_in_the_wheel() -> None:
    """A new room (a folder with __init__.py) must be listed in pyproject.toml, or the wheel lacks it."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p.parent) for root in CODE_ROOTS for p in (REPO / root).rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
