"""The layering of the tree (docs/layers.md declares the order): a package imports only packages
below it, and no modules import each other in a cycle. Every import counts: module-level ones,
those inside functions (lazy imports are still dependencies), and importlib.import_module("name")
with a literal name. Pure parsing (ast): nothing is imported, so the test is fast and cannot be
fooled by an import that happens to be cached.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_LAYERED = {"tests", "benchmarks", "scripts", "docs", "configs"}   # not packages of the product


def declared_layers() -> list[str]:
    """The order in docs/layers.md: the line `core <- sandbox <- ... <- terminus`, lowest first."""
    for line in (ROOT / "docs" / "layers.md").read_text().splitlines():
        if re.fullmatch(r"\s*\w+(\s*<-\s*\w+)+\s*", line):
            return [p.strip() for p in line.split("<-")]
    raise AssertionError("docs/layers.md has no line `core <- ... <- terminus` declaring the layer order")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name `source` imports, anywhere in it (functions included), resolved to absolute
    names: `from a.b import c` gives a.b.c (the module a.b.c, or else the name c of a.b)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: from the module's package, `level - 1` packages up
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from a import b`: the module a.b if there is one, else a (resolve_module decides)
            out.update(f"{prefix}.{a.name}" if a.name != "*" else prefix for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.add(node.args[0].value)   # importlib.import_module("pkg.mod"): an edge all the same
    return out


def resolve_module(name: str, modules: set[str]) -> str | None:
    """The longest prefix of `name` that is a module of the tree (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (itself excluded)."""
    files = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            if all((root / d / "__init__.py").exists() for d in rel.parents if d != Path(".")):
                files[module_name(path, root)] = path   # in a real package (not a task's template project)
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        names = imported_names(path.read_text(), mod, path.name == "__init__.py")
        graph[mod] = {r for n in names if (r := resolve_module(n, modules)) and r != mod}
    return graph


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    """Edges from a package to one at its level or above it in `layers` (its own package excepted)."""
    rank = {p: i for i, p in enumerate(layers)}
    bad = []
    for mod, targets in sorted(graph.items()):
        a = mod.split(".")[0]
        for t in sorted(targets):
            b = t.split(".")[0]
            if a != b and a in rank and b in rank and rank[b] >= rank[a]:
                bad.append(f"{mod} -> {t} ({a} is below {b} in docs/layers.md)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    pkgs: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        pkgs.setdefault(mod.split(".")[0], set()).update(t.split(".")[0] for t in targets)
    return cycles({p: ts - {p} for p, ts in pkgs.items()})


# --- the tree --------------------------------------------------------------------------------------

def test_every_package_of_the_tree_has_a_declared_layer():
    layers = declared_layers()
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - NOT_LAYERED
    assert found == set(layers), f"undeclared: {sorted(found - set(layers))}, gone: {sorted(set(layers) - found)}"


def test_no_package_imports_one_above_it():
    layers = declared_layers()
    assert upward_imports(import_graph(ROOT, layers), layers) == []


def test_no_import_cycle_between_packages_or_modules():
    graph = import_graph(ROOT, declared_layers())
    assert package_cycles(graph) == []
    assert cycles(graph) == []


def test_pyproject_ships_every_layer():
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*)\]$", text, re.MULTILINE).group(1)
    assert {p.strip(' "*') for p in include.split(",")} == set(declared_layers())


# --- the checker itself: it must be able to fail ---------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = _tree(tmp_path, {"core/__init__.py": "", "core/util.py": "import os\n",
                            "app/__init__.py": "", "app/cli.py": "from core.util import os\n",
                            "core/leak.py": "def f():\n    from app.cli import main\n    return main\n"})
    assert upward_imports(import_graph(root, ["core", "app"]), ["core", "app"]) == [
        "core.leak -> app.cli (core is below app in docs/layers.md)"]


def test_relative_and_importlib_imports_are_edges_too(tmp_path):
    root = _tree(tmp_path, {"core/__init__.py": "from . import a\n", "core/a.py": "",
                            "core/sub/__init__.py": "", "core/sub/b.py": "from ..a import x\n",
                            "app/__init__.py": "", "core/c.py": "import importlib\nimportlib.import_module('app')\n"})
    graph = import_graph(root, ["core", "app"])
    assert graph["core"] == {"core.a"} and graph["core.sub.b"] == {"core.a"}
    assert upward_imports(graph, ["core", "app"]) == ["core.c -> app (core is below app in docs/layers.md)"]


def test_a_cycle_is_caught():
    graph = {"tasks.builtin": {"tasks.corpus"}, "tasks.corpus": {"tasks.builtin", "tasks.types"},
             "tasks.types": set(), "rl.config": {"terminus.config"}, "terminus.config": {"rl.config"}}
    assert sorted(cycles(graph)) == [["rl.config", "terminus.config"], ["tasks.builtin", "tasks.corpus"]]
    assert package_cycles(graph) == [["rl", "terminus"]]
