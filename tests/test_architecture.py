"""The package's shape: imports point down the layers and form no circle; the CLI's help loads no heavy package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import predec
from predec.cli import COMMANDS

PACKAGE = Path(predec.__file__).parent

# Layers from the bottom; a module may import from its own layer and the ones below (docs/architecture.md).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("predec.allocator", "predec.atomic", "predec.config", "predec.zoo.registry"),
    ("predec", "predec.models", "predec.tasks", "predec.optim"),
    ("predec.data",),
    ("predec.engine",),
    ("predec.pretrain",),
    ("predec.zoo.build", "predec.zoo", "predec.demo", "predec.bench"),
    ("predec.commands", "predec.cli"),
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the predec modules it imports, at the top or inside functions (a lazy import is an arrow too)."""
    modules = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target) if target.startswith("predec") else None
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def layer(module: str) -> int:
    """The layer of ``module``: the one whose longest prefix matches it."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_loads_no_heavy_package(command: str | None) -> None:
    """``predec --help`` and ``predec CMD --help`` build every parser without torch, Lightning or timm (the reason
    they answer in well under a second)."""
    argv = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys\n"
        "from predec.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "heavy = [m for m in ('torch', 'lightning', 'timm', 'numpy') if m in sys.modules]\n"
        "assert not heavy, f'imported by --help: {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: predec" in result.stdout
