"""model_store's modules import each other without cycles, lazily inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import model_store

PACKAGE_DIR = Path(model_store.__file__).parent


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source (`package` is __init__)."""

    def module(name: str) -> str:
        return f"{package}.{name}" if (package_dir / f"{name}.py").is_file() else package

    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.glob("*.py")):
        this = package if path.stem == "__init__" else f"{package}.{path.stem}"
        edges = graph.setdefault(this, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 0 and base.split(".")[0] != package:
                    continue
                if node.level == 0:
                    base = base[len(package) :].lstrip(".")
                if base:
                    edges.add(module(base.split(".")[0]))
                else:  # `from . import x`: a module, or a name the package itself defines
                    edges.update(module(alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    head, _, rest = alias.name.partition(".")
                    if head == package:
                        edges.add(module(rest.split(".")[0]) if rest else package)
        edges.discard(this)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt, [*trail, node]):
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return None


def test_model_store_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE_DIR, "model_store")
    # The parser sees the edges that matter: the S3 modules build on the folder store, not back.
    assert {"model_store.store", "model_store.s3_mirror", "model_store.s3_publish"} <= graph["model_store.s3"]
    assert not {m for m in graph["model_store.store"] if m.startswith("model_store.s3")}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_check_catches_a_lazy_import_back(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from . import b\n\nclass A:\n    pass\n")
    (pkg / "b.py").write_text("def make():\n    from .a import A\n\n    return A()\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.a", "pkg.b", "pkg.a"]
    (pkg / "b.py").write_text("import pkg\n")  # the package's __init__ imports a, which imports b
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg", "pkg.a", "pkg.b", "pkg"]
    (pkg / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None
