"""The package's layering, checked from the source: no import cycles (imports inside functions
count), one front door for the commands, the CLI's output module only at the top."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ftte_cli"
Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> Graph:
    """Module -> the ftte_cli modules it imports anywhere in its file (module level, inside
    functions, under TYPE_CHECKING: all of them). `from pkg import name` counts as importing
    `pkg.name` when that is a module, else `pkg`."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.startswith("ftte_cli"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                if base.startswith("ftte_cli"):
                    targets.update(known(f"{base}.{a.name}") if f"{base}.{a.name}" in files
                                   else known(base) for a in node.names)
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


GRAPH = _import_graph()


def test_the_graph_sees_function_level_imports() -> None:
    # train/run.py imports the launcher inside a function only: the graph must still see it
    assert "ftte_cli.fleet.launch" in GRAPH["ftte_cli.train.run"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_only_the_cli_imports_commands() -> None:
    outside = {m for m, targets in GRAPH.items()
               if any(t.startswith("ftte_cli.commands") for t in targets)
               and not m.startswith("ftte_cli.commands") and m != "ftte_cli.cli"}
    assert outside == set()


def test_commands_reach_lower_layers_through_the_api_for_work() -> None:
    # the commands named in issue 12 as calling internals: they parse, call api, render
    work = {"ftte_cli.engine.selection", "ftte_cli.fleet.profile", "ftte_cli.train.run",
            "ftte_cli.train.planning", "ftte_cli.sim.runner", "ftte_cli.sim.world"}
    for name in ("plan", "demo", "train", "testbed", "inventory", "simulate", "deploy"):
        targets = GRAPH[f"ftte_cli.commands.{name}"]
        assert "ftte_cli.api" in targets, name
        assert not targets & work, name


def test_nothing_below_ui_imports_the_cli_output_module() -> None:
    top = ("ftte_cli.cli", "ftte_cli.commands", "ftte_cli.ui", "ftte_cli.output")
    below = {m for m, targets in GRAPH.items()
             if "ftte_cli.output" in targets and not m.startswith(top)}
    assert below == set()
