"""The layers' import rules, read from the source: no cycle between our modules (imports inside
functions count too), and each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "training", "serving", "pipelines")
ALLOWED = {
    "datasets": {"datasets"},
    "training": {"datasets", "training"},
    "serving": {"datasets", "training", "serving"},
    "pipelines": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    """``training/loop/train.py`` -> ``foresight.training.loop.train`` (the import name)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["foresight", *parts])


def _layer(module: str) -> str:
    return module.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (resolved to modules that exist)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                # the longest prefix that is one of our modules
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_init_imports_are_ours_when_a_package_re_exports():
    # a parent package counts as an import target (``import datasets`` -> datasets/__init__.py)
    assert "foresight.datasets.storage" in import_graph()["foresight.datasets.catalog"]


def test_no_import_cycle_between_our_modules():
    graph = import_graph()
    # a package importing its own submodules is how re-exports work: not a layering cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_each_layer_imports_only_the_layers_below():
    wrong = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        for target in targets
        if _layer(target) not in ALLOWED[_layer(name)]
    ]
    assert not wrong, wrong


def test_our_modules_are_imported_only_by_their_namespaced_names():
    """``import datasets`` would load Hugging Face's package (or ours twice, under two names)."""
    bare = []
    for path in (p for pkg in (*PACKAGES, "tests", "bench") for p in (ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bare += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, bare
