"""The sandbox image (sandbox/image/Dockerfile): its packages cover every command the corpus's task
kinds run (no engine needed), and where an engine and the built image exist, a sample of built-in and
real tasks has the same ground truth under bwrap and in the image."""
from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import tasks as tasks_pkg
from sandbox.config import SandboxConfig
from tasks.builtin import PROJECTS
from tasks.generated import FAMILIES, draft
from tasks.kinds import build_commands
from tasks.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "sandbox" / "image" / "Dockerfile"
MANIFESTS = sorted((Path(tasks_pkg.__file__).parent / "manifests").glob("*.jsonl"))

# The Debian 12 package that provides each command the corpus runs (a command a package installs
# through a dependency names that package: java comes with openjdk-17-jdk-headless).
PROVIDER = {
    "sh": "bash", "bash": "bash", "mkdir": "coreutils", "cp": "coreutils", "cat": "coreutils",
    "find": "findutils", "grep": "grep", "sed": "sed",
    "python3": "python3", "pytest": "python3-pytest", "pyflakes": "python3-pyflakes",
    "node": "nodejs", "npx": "npm", "npm": "npm",
    "gcc": "gcc", "cc": "gcc", "g++": "g++", "make": "make", "cmake": "cmake", "ctest": "cmake",
    "autoreconf": "autoconf", "autoconf": "autoconf", "automake": "automake", "libtoolize": "libtool", "pkg-config": "pkg-config",
    "javac": "openjdk-17-jdk-headless", "java": "openjdk-17-jdk-headless",
    "dh_auto_configure": "debhelper", "dh_auto_build": "debhelper", "dh_auto_test": "debhelper",
    "mh_patchpoms": "maven-debian-helper",   # its maven buildsystem (and maven-repo-helper, which it pulls in)
}
# Java classes the corpus's commands run from /usr/share/java -> the Debian package of their jar
CLASSES = {"org.junit.platform.console.ConsoleLauncher": "junit5"}
# what a build driver runs in turn: C and C++ projects compile through make and cmake; autoreconf
# runs automake and libtoolize, and configure scripts call pkg-config; debhelper runs Maven
DRIVES = {"make": {"cc", "gcc", "g++"}, "cmake": {"make", "cc", "gcc", "g++"},
          "autoreconf": {"autoconf", "automake", "libtoolize", "pkg-config"},
          # a Java project's own Maven build, as Debian builds it (maven-debian-helper's buildsystem)
          "dh_auto_configure": {"mh_patchpoms"}, "dh_auto_build": {"java", "mh_patchpoms"},
          "dh_auto_test": {"java", "mh_patchpoms"}}
SHELL_WORDS = {"[", "for", "do", "done", "if", "then", "else", "fi", "in", "case", "esac", "while", "true",
               "false", "test", "echo", "cd", "export"}


def dockerfile_packages(text: str) -> set[str]:
    """The packages of the Dockerfile's `apt-get install` (its continuation lines, up to the next &&)."""
    m = re.search(r"apt-get install(.*?)(?:&&|$)", text.replace("\\\n", " "), re.DOTALL)
    assert m, "the Dockerfile has no apt-get install"
    return {w for w in m.group(1).split() if not w.startswith("-")}


def executables(command: str) -> set[str]:
    """The programs a shell command line runs: the first word of each simple command (after variable
    assignments), a third-party `python3 -m MODULE` as MODULE too, node_modules/.bin/* as node; relative paths
    (./configure, ./test_x: the project's own) and shell keywords are left out."""
    found: set[str] = set()
    for part in re.split(r"&&|\|\||[;|]|\$\(|\)", command):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        while words and re.fullmatch(r"\w+=\S*", words[0]):
            words = words[1:]
        if not words or words[0] in SHELL_WORDS or words[0].startswith("./"):
            continue
        if words[0].startswith("node_modules/.bin/"):
            found.add("node")
            continue
        found.add(words[0])
        if words[0] == "python3" and len(words) > 2 and words[1] == "-m" \
                and words[2] not in sys.stdlib_module_names:   # a third-party tool: pytest, pyflakes
            found.add(words[2])
        if words[0] == "npx":
            found.add("node")
    return found


def corpus_commands() -> dict[str, str]:
    """Every command line the corpus's task kinds run -> where it comes from."""
    out: dict[str, str] = {}
    for manifest in MANIFESTS:
        for e in load_manifest(manifest)[0]:
            where = f"{manifest.name}: {e.name} ({e.language}, {e.runner})"
            for c in (*e.setup, *build_commands(e)):
                out.setdefault(c, where)
            if e.test_command == "auto":   # npm projects: a TAP runner from node_modules/.bin
                out.setdefault("node_modules/.bin/tape 'test/**/*.js'", where)
                if e.language == "typescript":   # the type-check of build tasks, the build step (typescript_build)
                    out.setdefault("npx --no-install tsc --noEmit --pretty false", where)
                    out.setdefault("npm run build || [ $? -eq 2 ]", where)
            else:
                out.setdefault(e.test_command, where)
            if e.language == "python":   # lint tasks and pytest through the project's venv
                out.setdefault("python3 -m pyflakes .", where)
    for p in PROJECTS:
        for c in (p.command, p.lint_command):
            if c:
                out.setdefault(c, f"built-in project {p.name}")
    for family in FAMILIES:
        out.setdefault(draft(family, "0", False).command, f"generated family {family}")
    return out


def test_executables_of_a_command_line():
    assert executables("[ -f configure ] || autoreconf -fi") == {"autoreconf"}
    assert executables("USE_VALGRIND=0 make check && ./configure") == {"make"}
    assert executables("javac -d b -cp 'x:/usr/share/java/*' $(find src -name '*.java')") == {"javac", "find"}
    assert executables("PYTHONPATH=src python3 -m pytest -q tests") == {"python3", "pytest"}
    assert executables("node_modules/.bin/tape 'test/**/*.js'") == {"node"}


def test_the_image_holds_every_toolchain_the_corpus_runs():
    packages = dockerfile_packages(DOCKERFILE.read_text())
    commands = corpus_commands()
    used: dict[str, str] = {}
    for line, where in commands.items():
        for exe in executables(line):
            for e in {exe, *DRIVES.get(exe, ())}:
                used.setdefault(e, f"`{line}` ({where})")
    unknown = {e: w for e, w in used.items() if e not in PROVIDER}
    assert not unknown, f"commands of the corpus with no package in PROVIDER (add it, and to the Dockerfile): {unknown}"
    missing = {e: PROVIDER[e] for e in used if PROVIDER[e] not in packages}
    assert not missing, f"the Dockerfile lacks packages the corpus's commands need: {missing}"
    # the kinds that must be there: Python with pytest, Node, gcc/make, a JDK with JUnit 5
    assert {"python3", "pytest", "node", "gcc", "make", "javac", "java"} <= set(used)
    text = "\n".join(commands)
    assert "org.junit.platform.console.ConsoleLauncher" in text
    for cls, package in CLASSES.items():
        assert cls not in text or package in packages, f"{cls} comes from {package}, which the Dockerfile lacks"


def test_the_toolchain_check_fails_without_a_toolchain():
    # what the check above sees when a toolchain is dropped from the Dockerfile
    text = DOCKERFILE.read_text()
    for package in ("openjdk-17-jdk-headless", "nodejs", "python3-pytest", "gcc"):
        assert package in dockerfile_packages(text)
        assert package not in dockerfile_packages(re.sub(rf"^\s+{re.escape(package)} \\\n", "", text, flags=re.M))


def test_config_and_docs_name_the_build_script():
    assert "scripts/build_sandbox_image.sh" in (ROOT / "configs" / "qwen3_4b.yaml").read_text()
    assert "scripts/build_sandbox_image.sh" in (ROOT / "docs" / "sandbox.md").read_text()
    assert SandboxConfig().image == "terminus-base:latest"
    assert (ROOT / "scripts" / "build_sandbox_image.sh").stat().st_mode & 0o111


# ---- bwrap vs the image: needs an engine and the built image --------------------------------------

def _image() -> tuple[str, str]:
    """(engine, image) when an engine answers and the image is built; else skip with the reason."""
    import os

    from sandbox.container import engine_available
    image = os.environ.get("TERMINUS_TEST_IMAGE", SandboxConfig().image)
    reasons = []
    for engine in ("docker", "podman"):
        ok, why = asyncio.run(engine_available(engine))
        if not ok:
            reasons.append(why)
            continue
        if subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode == 0:
            return engine, image
        reasons.append(f"{engine} has no image {image!r}: run scripts/build_sandbox_image.sh")
    pytest.skip("no container engine with the sandbox image here: " + "; ".join(reasons))


def _facts(task) -> tuple:
    return task.ground_truth.exit_status, [(f.kind, f.value) for f in task.ground_truth.facts]


@pytest.mark.slow
def test_builtin_ground_truth_is_the_same_under_bwrap_and_in_the_image(tmp_path):
    engine, image = _image()
    from tasks.builtin import build_builtin
    bwrap = asyncio.run(build_builtin(tmp_path / "bwrap", SandboxConfig()))
    container = asyncio.run(build_builtin(tmp_path / "image", SandboxConfig(backend=engine, image=image)))
    assert len(bwrap) == len(container) > 20
    by_id = {t.id: t for t in container}
    differ = [t.id for t in bwrap if _facts(t) != _facts(by_id[t.id])]
    assert not differ, f"ground truth differs in the image: {differ[:5]}"
    assert {t.language for t in bwrap} >= {"python", "c", "javascript"}


@pytest.mark.slow
def test_real_ground_truth_is_the_same_under_bwrap_and_in_the_image(tmp_path):
    """Real tasks (a C project with an automake harness, a Java project with JUnit 5, both built by the
    real builder under bwrap): their test commands rerun in the image give the same per-test results
    and exit status as their ground truth."""
    engine, image = _image()
    from tasks.manifest import Entry, check_project
    from test_tasks_real import MINI_C, MINI_JAVA, _build_one  # tests/ is on sys.path

    java = next(e for e in load_manifest(MANIFESTS[0].parent / "default.jsonl")[0] if e.language == "java")
    built = {}
    for name, files, entry in (("minic", MINI_C, Entry("minic", "local", "0", "c", "make check", setup=("make",),
                                                       runner="automake")),
                               ("minijava", MINI_JAVA, java)):
        proj = tmp_path / name
        for rel, text in files.items():
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            (proj / rel).write_text(text)
        entry = dataclasses.replace(entry, name=name, ecosystem="local", version="0", path=str(proj))
        out = tmp_path / f"corpus-{name}"
        built.update({t.id: (t, entry, out) for t in _build_one(entry, out).values()})
    assert len(built) >= 4   # a clean task and fault tasks of each project
    cfg = SandboxConfig(backend=engine, image=image)
    for tid, (task, entry, out) in built.items():
        chk = asyncio.run(check_project(str(out / task.repo_dir), entry, cfg,
                                        environment=task.environment.resolved(str(out))))
        assert chk.verdict == "runs", f"{tid}: {chk.reason}"
        assert chk.results[0] == task.ground_truth.observed["tests"], tid
        assert chk.exit_codes[0] == task.ground_truth.exit_status, tid
