"""The import graph of llama/ and classification/, read from the source with ``ast``.

Every ``import`` counts, at module level or inside a function.  The graph has no cycle; llama
never imports classification; no project module is imported inside a function (a circle hidden
by a late import is still a circle); each layer of classification imports only the layers below
it; torch is imported by classification's backend only, so records and metrics do not pay for it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llama", "classification")

# Layers of classification, lowest first: a module imports modules of its own layer or of lower ones.
# "shared" is every module at the top of classification/ but the API.
LAYERS = {
    "llama": 0, "shared": 1, "inputs": 2, "backend": 2, "report": 3, "run": 4, "api": 5, "package": 6,
}
# Third-party packages classification may import inside a function (optional or slow, needed by one
# feature only), and the only part of classification that imports torch.
LATE_IMPORTS = {"bm25s", "datasets", "sentence_transformers", "matplotlib", "fire"}
TORCH_LAYER = "backend"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> Dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, modules: Dict[str, Path]) -> Iterator[Tuple[str, bool, int]]:
    """(imported module, inside a function, line) of every import in the file; a name imported
    from a package is the submodule of that name when there is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, inside, child.lineno
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield (sub if sub in modules else base), inside, child.lineno
            yield from visit(child, inside)

    yield from visit(tree, False)


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "llama":
        return "llama"
    if len(parts) == 1:
        return "package"
    if parts[1] in ("inputs", "backend", "report", "run", "api"):
        return parts[1]
    return "shared"


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    return {name: {m for m, _, _ in imports(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of the graph as a list of modules (empty when there is none)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_graph_is_read(graph):
    assert len(graph) > 40
    assert "classification.inputs.datasets" in graph["classification.inputs.retrieval"]
    assert "classification.backend.hidden" in graph["classification.backend.scoring"]  # `from pkg import module`
    assert "classification.api" in graph["classification"]  # the API's imports for type checkers count


def test_no_import_cycle(graph):
    assert find_cycle(graph) == []


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_llama_never_imports_classification(graph):
    for name, targets in graph.items():
        if name.startswith("llama"):
            assert not [t for t in targets if t.startswith("classification")], name


def test_no_project_module_is_imported_inside_a_function():
    modules = project_modules()
    late = [f"{path.relative_to(ROOT)}:{line} imports {target}"
            for path in modules.values() for target, inside, line in imports(path, modules)
            if inside and target.split(".")[0] in PACKAGES]
    assert late == []


def test_layers_import_only_layers_below(graph):
    wrong = [f"{name} ({layer(name)}) imports {target} ({layer(target)})"
             for name, targets in graph.items() for target in targets
             if layer(target) != layer(name) and LAYERS[layer(target)] >= LAYERS[layer(name)]]
    assert wrong == []


def test_classification_imports_torch_in_the_backend_only_and_optional_packages_late():
    modules = project_modules()
    for name, path in modules.items():
        if not name.startswith("classification"):
            continue
        for target, inside, line in imports(path, modules):
            top = target.split(".")[0]
            if top == "torch":
                assert layer(name) == TORCH_LAYER, f"{path.relative_to(ROOT)}:{line} imports torch"
            if inside and top not in PACKAGES:
                assert top in LATE_IMPORTS, f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
