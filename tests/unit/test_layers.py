"""The layering rule of docs/architecture.md, checked on every module's imports (ast).

Each package (or leaf module) of ``src/headwater`` has a rank; a module may
import its own package and anything of a lower rank, never the other way
round. Imports under ``if TYPE_CHECKING:`` and imports inside functions
count too: a lazy import may reach upward only with a ``# layering:`` comment
(on its line or the line above) saying why. And no import that runs forms a
cycle, lazy ones included. A package not in :data:`RANKS` fails the test: place it in the table
and in docs/architecture.md.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src"
ROOT = SRC / "headwater"

RANKS: dict[str, int] = {
    # leaf modules: the standard library and third-party packages only
    "headwater": 0,  # the package's version
    "headwater._signal": 0,
    "headwater.backoff": 0,
    "headwater.durations": 0,
    "headwater.logs": 0,
    "headwater.natsclient": 0,  # nats-py only
    "headwater.http_guard": 1,  # logs
    # sans-IO protocol code
    "headwater.cloudevents": 2,
    "headwater.cesql": 3,
    "headwater.mqtt": 3,
    "headwater.tracing": 3,  # W3C Trace Context and spans; reads CloudEvents' extensions
    # durable state
    "headwater.log": 4,
    "headwater.state": 4,
    # Knative's data plane
    "headwater.eventing": 5,
    # where events come from and go to
    "headwater.sources": 6,
    "headwater.tiers": 6,  # uplink and downlink between an edge and an upper tier
    "headwater.sinks": 7,  # the MQTT sink publishes into the embedded broker source
    "headwater.devices": 7,  # the device registry reads the MQTT mapping of sources
    # the resource schema (its pure parts may be read by any layer above)
    "headwater.resources": 8,
    "headwater.runtime": 9,
    "headwater.cluster": 10,  # several nodes: wraps the runtime's seams
    "headwater.api": 11,
    "headwater.cli": 12,  # runs the server, talks to the API
}
"""Lower ranks never import higher ones; equal ranks of other packages do not import
each other either. Keep in step with docs/architecture.md, "Layers"."""


@dataclass(frozen=True)
class Import:
    module: str
    target: str
    line: int
    lazy: bool
    type_only: bool
    comment: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def unit(module: str) -> str:
    """The package (or leaf module) a module belongs to, as :data:`RANKS` names it."""
    return ".".join(module.split(".")[:2])


def imports_of(module: str, path: Path) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        # `from package import module` imports that module.
        submodules = [f"{base}.{alias.name}" for alias in node.names]
        return [base, *(name for name in submodules if name in MODULES)]

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for inner in child.body:
                    visit(ast.Module(body=[inner], type_ignores=[]), lazy, True)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                first, last = max(child.lineno - 2, 0), child.end_lineno or child.lineno
                comment = " ".join(lines[first:last])
                found.extend(
                    Import(module, target, child.lineno, lazy, type_only, comment)
                    for target in targets(child)
                    if target in MODULES
                )
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True, type_only)
            else:
                visit(child, lazy, type_only)

    visit(ast.parse(source), False, False)
    return found


ALL_IMPORTS = [i for module, path in MODULES.items() for i in imports_of(module, path)]


def test_every_module_has_a_layer() -> None:
    assert sorted({unit(m) for m in MODULES} - RANKS.keys()) == []


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for i in ALL_IMPORTS:
        here, there = unit(i.module), unit(i.target)
        if here == there or RANKS[there] < RANKS[here]:
            continue
        if i.lazy and "# layering:" in i.comment:
            continue  # a lazy import that says why it reaches up
        where = "lazily " if i.lazy else "for types " if i.type_only else ""
        wrong.append(f"{i.module}:{i.line} imports {i.target} {where}({here} -> {there})")
    assert wrong == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles() -> None:
    # Every import that runs: at module level, or later inside a function (a
    # lazy import is how a cycle hides). TYPE_CHECKING imports never run; the
    # layering test above keeps them downward too.
    edges: dict[str, set[str]] = {}
    for i in ALL_IMPORTS:
        if not i.type_only and i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    assert cycles(edges) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        pytest.param({"a": {"b"}, "b": {"a"}}, [["a", "b"]], id="two"),
        pytest.param({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]], id="three"),
        pytest.param({"a": {"b"}, "b": {"c"}}, [], id="none"),
    ],
)
def test_the_cycle_finder_finds_cycles(
    edges: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(edges) == expected


def test_the_import_reader_sees_lazy_and_type_only_imports(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "from headwater import logs\n"
        "if TYPE_CHECKING:\n"
        "    from headwater.runtime import Runtime\n"
        "def f():\n"
        "    # layering: a reason\n"
        "    import headwater.api.app\n"
    )
    found = {(i.target, i.lazy, i.type_only) for i in imports_of("headwater.log.m", path)}
    assert ("headwater.logs", False, False) in found
    assert ("headwater.runtime", False, True) in found
    assert ("headwater.api.app", True, False) in found
    (lazy,) = [i for i in imports_of("headwater.log.m", path) if i.lazy]
    assert "# layering: a reason" in lazy.comment


MAX_LINES = 800
"""Files stay small and named for what they hold."""

OVER_MAX_LINES: dict[str, str] = {
    # A module allowed over the limit for a while, and why; the test fails once
    # it is under the limit again, so that its entry goes.
}


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    long = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in OVER_MAX_LINES}
    assert long == {}
    stale = [m for m in OVER_MAX_LINES if sizes.get(m, 0) <= MAX_LINES]
    assert stale == [], "under the limit now: remove from OVER_MAX_LINES"
