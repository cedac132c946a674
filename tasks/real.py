"""Tasks from real open-source projects listed in a manifest (tasks/manifests/*.jsonl).

For each entry: fetch the source through its package registry (PyPI sdist with `pip download
--no-binary :all:`, npm tarball with `npm pack`, a Debian source package's upstream tarball with
`apt-get source --download-only` against private package lists), check in a sandbox that its tests run and are not
flaky (tasks.manifest.check_project), then make tasks:
  - run_tests on the project as released (ground truth: the per-test results of the real run);
  - one run_tests task per injected fault (flipped comparison, off-by-one, flipped boolean) that makes
    tests fail in two runs alike, applied to a real source file at a recorded line.
Every command runs in a sandbox with the project's environment (`environment`: the venv a Python
project's tests import, the node_modules an npm project's tests require, shared by its tasks), and
each task records it, so its episodes run exactly where its ground truth was made.
Ground truth an agent can earn: a fact enters a task only when its evidence is in what the reference
command printed, as the agent sees it (capped at `observation_cap` bytes, head and tail); when the cut
hides the failing tests' names, the reference runs the tests again filtered to their failure lines
(tasks.runs.show_failures). Where the
fault was injected stays in `observed["mutation"]` for analysis; it is a fact (the cause) only when
an output shows the mutated file and line. After a failing run whose output points into the
project's files, the reference looks at the lines there (tasks.runs.look_at_failure) and the report
cites them; that look may show the cause, and so may the definition of the function a failing test
line calls, which the reference finds and shows next (tasks.runs.follow_call: Python, JavaScript).
Dropped facts are counted in corpus.json.
Projects that cannot be fetched, whose tests cannot run, or that are flaky are excluded and the
reason is recorded in the corpus summary.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import kinds
from tasks.builtin import Mutation, apply_mutation
from tasks.manifest import Entry, check_project, why_failed
from tasks.runs import (Look, Run, base_name, cause_fact, copy_source, failed, look_at_failure, make_task,
                        mutation_record, result_facts, show_failures, task_id)
from tasks.types import Fact, Task, TaskEnvironment, unmet_debian_packages

# (operator name, old, new, cause): applied to the first matching source line of a file
OPERATORS = (("flip_eq", " == ", " != ", "an equality test is negated"),
             ("offbyone", " + 1", " + 2", "an off-by-one change (+ 1 became + 2)"),
             ("flip_lt", " < ", " >= ", "a comparison is flipped (< became >=)"),
             ("flip_bool", "return True", "return False", "a function returns False instead of True"),
             ("flip_ne", " != ", " == ", "an inequality test is negated (!= became ==)"))
SOURCE_EXT = {"python": (".py",), "javascript": (".js",), "typescript": (".ts",), "java": (".java",),
              "c": (".c", ".h"), "cpp": (".cpp", ".cc", ".cxx", ".c", ".hpp", ".hh", ".h")}
HEADERS = (".h", ".hh", ".hpp")
COMPILED = ("c", "cpp", "java")   # languages whose sources are compiled by the project's setup
# directories whose sources are not the library under test (or not built by the default build)
SKIP_DIRS = {"node_modules", "build", "example", "examples", "fuzz", "fuzzing", "ossfuzz", "bench", "benchmark",
             "benchmarks", "contrib", "doc", "docs", "demo", "demos", "vendor", "third_party", "debian"}
MAX_FAULTS = 6
MAX_FAULT_TRIES = 16           # mutations tried per project (each one is a sandboxed test run)...
MAX_FAULT_TRIES_COMPILED = 10  # ...and per C/C++ project, where each one is also a rebuild
# Java without Maven (a Debian package whose packaging skips the tests), as tasks/manifests/default.jsonl
# builds its Java projects: javac against the jars Debian installs, leaving out the test sources that
# import libraries Debian does not package (or not here), and the JUnit Platform console launcher
UNPACKAGED_JAVA = ("org.mockito", "org.easymock", "com.generationjava", "org.h2", "org.openjdk.jmh",
                   "com.google.common.jimfs", "org.junitpioneer", "org.joda.time", "org.eclipse.jetty", "junitparams",
                   "org.junit.contrib", "com.google.gson", "org.assertj")
JAVAC_SETUP = ("mkdir -p build/main build/test",
               "javac -nowarn -encoding UTF-8 -d build/main -cp '/usr/share/java/*' $(find src/main/java -name '*.java')",
               "javac -nowarn -encoding UTF-8 -d build/test -cp 'build/main:/usr/share/java/*' $(grep -rL "
               + " ".join(f"-e {p}" for p in UNPACKAGED_JAVA) + " src/test/java --include='*.java')",
               "for d in main test; do if [ -d src/$d/resources ]; then cp -r src/$d/resources/. build/$d/; fi; done")
JAVAC_TEST = ("java -Xmx512m -cp 'build/main:build/test:/usr/share/java/*' org.junit.platform.console.ConsoleLauncher "
              "--scan-classpath build/test --disable-banner --disable-ansi-colors")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# a main agent's goals, naming no command: the agent finds out how the project is tested
GOAL_REQUESTS = ("Run the test suite of {name} and tell me what fails, if anything.",
                 "Find out how {name}'s tests are run, run them, and report which fail and why.",
                 "I changed some code in {name}. Check whether its tests still pass and summarize the results.",
                 "Do the {name} tests pass? If not, which ones fail?")
REQUESTS = ("Run the test suite of {name} (`{cmd}`) and tell me what fails, if anything.",
            "Can you run `{cmd}` in this repo and report which tests fail and why?",
            "I changed some code in {name}. Run the tests (`{cmd}`) and summarize the results.",
            "Check whether the {name} tests pass: `{cmd}`. If not, which ones fail and what is the likely cause?",
            "Please run `{cmd}` and give me the pass/fail counts and any failing test names.")


OBSERVATION_CAP = 16384   # bytes of a command's output an episode shows (rollout.sandbox.output_limit_bytes)


VENV_MOUNT = "/opt/venv"   # where a Python project's virtual environment appears in its sandboxes
VENV_TOOLS = ("pytest", "pyflakes")   # in every project's venv: the test runner and the linter of lint tasks


def environment(shared_node_modules: str = "", venv: str = "", wheels: str = "",
                debian_packages: str = "") -> TaskEnvironment:
    """What the project's commands run with, in the build and in every episode of its tasks: a Python
    project its own virtual environment (`venv`, relative to the corpus: bound read-only at
    /opt/venv, first on PATH, with the interpreter it was made from); an npm project its
    node_modules, shared by the project's tasks (bound read-only into the repository). An install
    task adds the project's wheelhouse (`wheels`, bound at /opt/wheels), with pip reading no
    configuration file (the host's /etc/pip.conf may name indexes and constraints the build did not use).
    A project built by its Debian packaging needs its Build-Depends (`debian_packages`) on the host."""
    binds: list[str] = []
    env = {"HOME": "/tmp"}
    if venv:
        binds += [f"{venv}:{VENV_MOUNT}", sys.base_prefix]
        env["PATH"] = f"{VENV_MOUNT}/bin:/usr/local/bin:/usr/bin:/bin"
    if shared_node_modules:
        binds.append(f"{shared_node_modules}:node_modules")
    if wheels:
        binds.append(f"{wheels}:{kinds.WHEELS_MOUNT}")
        env |= {"PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return TaskEnvironment(binds, env, debian_packages)


def shared_build(kind: str, key: str, out: Path, build, symlinks: bool = False) -> tuple[str, dict]:
    """A tree built once per `key` into ~/.cache/terminus/<kind>/<key> (`build(dir)` fills it and
    returns what its COMPLETE marker records), then copied into the corpus at shared/<kind>/<key>.
    Returns that path, relative to the corpus, and the record. Ray tasks of one machine may race for
    a key: a file lock makes one build it and the others wait for it."""
    from core.files import write_json_atomic
    from core.model import cache_root
    cached = cache_root() / kind / key
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _marker(cached)
        if record is None:   # never built, or a build that died before its marker was whole
            shutil.rmtree(cached, ignore_errors=True)
            record = build(cached)
            write_json_atomic(cached / "COMPLETE", record)
        rel = f"shared/{kind}/{key}"
        if _marker(out / rel) != record:
            shutil.rmtree(out / rel, ignore_errors=True)
            shutil.copytree(cached, out / rel, symlinks=symlinks)
        return rel, record


def _marker(tree: Path) -> dict | None:
    """What a shared tree's COMPLETE marker records; None when it has none, or one that does not parse
    (a cache written by a build killed mid-write, or by an older version of this builder)."""
    try:
        record = json.loads((tree / "COMPLETE").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def project_venv(entry: Entry, out: Path) -> str:
    """The virtual environment of a Python project: VENV_TOOLS and the manifest's `test_deps`, from
    PyPI at build time. Built once per set of packages (a content hash) into ~/.cache/terminus/venvs,
    copied into the corpus (shared/venvs/<hash>, shared by every project with that set); returns its
    path relative to the corpus. Its scripts name the cache path, so tasks run `python3 -m ...`."""
    deps = sorted({*VENV_TOOLS, *entry.test_deps})
    key = hashlib.sha256("\n".join([sys.version, *deps]).encode()).hexdigest()[:12]

    def build(cached: Path) -> dict:
        base = getattr(sys, "_base_executable", sys.executable)
        pip = [str(cached / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]

        def run(cmd: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        for cmd in ([base, "-m", "venv", str(cached)], [*pip, *VENV_TOOLS]):
            if (r := run(cmd)).returncode != 0:
                raise RuntimeError(f"creating the test environment failed: {why_failed(r.stderr + r.stdout)}")
        missing = []
        if run([*pip, *deps]).returncode != 0:   # one unknown package must not sink the others
            missing = [d for d in deps if run([*pip, d]).returncode != 0]
        return {"installed": [d for d in deps if d not in missing], "not_on_pypi": missing}
    return shared_build("venvs", key, out, build, symlinks=True)[0]


@dataclass(frozen=True)
class Wheelhouse:
    """A Python project's dependencies as wheels, for installing it offline (install tasks), and what
    its own wheel's metadata says (run_script tasks)."""
    path: str                  # relative to the corpus: shared/wheels/<hash>
    requires: tuple[str, ...]  # its runtime requirements (Requires-Dist without an extra)
    scripts: tuple[tuple[str, str], ...]   # its console scripts: (name, "module:function")


_METADATA_FILES = ("pyproject.toml", "setup.cfg", "setup.py")


def _wheel_metadata(wheel: Path) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(runtime requirements, console scripts) from a built wheel's METADATA and entry_points.txt."""
    import configparser
    import zipfile
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode(errors="replace")
        points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        cfg = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        cfg.optionxform = str   # a script's name as written
        if points:
            cfg.read_string(z.read(points).decode(errors="replace"))
    requires = tuple(r for r in re.findall(r"^Requires-Dist: (.+)$", meta, re.MULTILINE)
                     if "extra" not in r.partition(";")[2])
    scripts = tuple(sorted(cfg.items("console_scripts"))) if cfg.has_section("console_scripts") else ()
    return requires, scripts


def project_wheels(entry: Entry, root: Path, out: Path) -> Wheelhouse:
    """The wheels `pip install --no-index --find-links` needs to install the project from its source
    offline: its runtime dependencies and its build backend (pyproject's build-system.requires, else
    setuptools; and wheel), from PyPI at build time, never the project's own wheel (the install
    builds it). Built once per project source (a hash of its metadata files) into
    ~/.cache/terminus/wheels, copied into the corpus (shared/wheels/<hash>). Raises RuntimeError
    when pip cannot build them."""
    import tomllib
    texts = [(root / n).read_text(errors="replace") if (root / n).is_file() else "" for n in _METADATA_FILES]
    key = hashlib.sha256("\n".join([sys.version, entry.key, *texts]).encode()).hexdigest()[:12]

    def build(cached: Path) -> dict:
        own = cached.with_name(key + ".own")
        shutil.rmtree(own, ignore_errors=True)
        try:
            backend = tomllib.loads(texts[0]).get("build-system", {}).get("requires") if texts[0] else None
        except ValueError:
            backend = None

        def wheel(dest: Path, *args: str) -> None:
            r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                                "-w", str(dest), *args], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"building the wheelhouse failed: {why_failed(r.stderr + r.stdout)}")
        src = cached.with_name(key + ".src")   # a copy: building leaves build/ and *.egg-info behind
        shutil.rmtree(src, ignore_errors=True)
        copy_source(root, src)
        wheel(own, "--no-deps", str(src))    # the project's own wheel, built once...
        shutil.rmtree(src)
        [wheel_file] = own.glob("*.whl")
        wheel(cached, str(wheel_file))       # ...then its dependencies
        wheel(cached, "wheel", *(backend or ["setuptools>=40.8.0"]))
        (cached / wheel_file.name).unlink(missing_ok=True)   # the install builds the project itself
        requires, scripts = _wheel_metadata(wheel_file)
        shutil.rmtree(own)
        return {"requires": requires, "scripts": scripts}
    rel, meta = shared_build("wheels", key, out, build)
    return Wheelhouse(rel, tuple(meta["requires"]), tuple(map(tuple, meta["scripts"])))


def sandbox_config(base=None):
    """The builder's sandboxes keep the whole test output (the episode's observation cap would drop
    the middle of a long run, and with it per-test results); what the agent sees is computed from it."""
    from sandbox.config import SandboxConfig
    cfg = dataclasses.replace(base) if base else SandboxConfig()
    cfg.output_limit_bytes = max(cfg.output_limit_bytes, 16 << 20)
    return cfg


_DEBIAN_LOCK = threading.Lock()
_debian_ready: set[str] = set()


def debian_state(root: Path | None = None) -> list[str]:
    """apt-get options that use private Debian source lists (never the system's apt configuration),
    under ~/.cache/terminus/debian-apt; the lists are refreshed at most every 6 hours, by one process
    at a time (the file lock), and `apt-get source` of many processes reads them concurrently."""
    if root is None:
        from core.model import cache_root
        root = cache_root() / "debian-apt"
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={root}/sources",
            "-o", f"Dir::State::Lists={root}/lists", "-o", f"Dir::Cache={root}/cache"]
    with _DEBIAN_LOCK:
        if str(root) in _debian_ready:
            return opts
        for d in ("sources", "lists/partial", "cache/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # one update at a time across the build's processes (Ray workers), and at most one per 6 hours
        with open(root / "update.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = root / "updated"
            if not stamp.exists() or time.time() - stamp.stat().st_mtime > 6 * 3600:
                (root / "sources" / "debian-src.sources").write_text(
                    f"Types: deb-src\nURIs: {DEBIAN_MIRROR}\nSuites: {DEBIAN_SUITE}\nComponents: main\n"
                    f"Signed-By: {DEBIAN_KEYRING}\n")
                r = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    raise RuntimeError(f"apt-get update of the Debian source lists failed: {(r.stderr or r.stdout)[-300:]}")
                stamp.touch()
        _debian_ready.add(str(root))
    return opts


def _fetch_debian(entry: Entry, dest: Path) -> list[Path]:
    """The upstream tarball of a Debian source package (NAME_UPSTREAM.orig.tar.*, or the one tarball of
    a native package), and its packaging (NAME_VERSION.debian.tar.*) when the project is built by it
    (uses_debian_packaging); the extra component tarballs (orig-NAME: bundled dependencies, which the
    npm registry provides) are not needed, and a mirror that lacks one of them must not sink the project."""
    r = subprocess.run(["apt-get", *debian_state(), "source", "--print-uris", f"{entry.name}={entry.version}"],
                       cwd=dest, capture_output=True, text=True, timeout=600)
    uris = re.findall(r"^'(\S+)' (\S+) \d+", r.stdout, re.MULTILINE)
    main = [(u, f) for u, f in uris if ".tar." in f and not f.endswith(".asc") and ".debian.tar." not in f
            and ".orig-" not in f]
    packaging = [(u, f) for u, f in uris if ".debian.tar." in f and not f.endswith(".asc")]
    if r.returncode != 0 or not main:
        errors = [line for line in (r.stderr or r.stdout).splitlines() if line.startswith("E:")]
        raise RuntimeError(f"apt-get source {entry.name}={entry.version} failed: "
                           f"{' '.join(errors)[-300:] or 'no upstream tarball listed'}")
    archives = []
    for uri, name in main[:1] + (packaging[:1] if uses_debian_packaging(entry) else []):
        d = subprocess.run(["curl", "-sSfL", "--retry", "2", "-o", str(dest / name), uri], capture_output=True,
                           text=True, timeout=600)
        if d.returncode == 0:
            archives.append(dest / name)
        elif not archives:   # the packaging may be missing (the mirror's 404): resolve_entry does without it
            raise RuntimeError(f"downloading {name} of Debian source {entry.name}={entry.version} failed: "
                               f"{d.stderr.strip()[-200:]}")
    return archives


def uses_debian_packaging(entry: Entry) -> bool:
    """Whether the project is built by its Debian packaging (debhelper's `dh_auto_*` in its commands,
    e.g. Java through maven-debian-helper, offline against Debian's Maven repository): the build
    fetches debian/ with the source, and the project needs its Build-Depends installed."""
    return any(re.search(r"\bdh_auto_\w+", c) for c in (*entry.setup, entry.test_command))


def has_debian_packaging(root: Path) -> bool:
    return (root / "debian" / "control").is_file()


def debian_skips_tests(root: Path) -> bool:
    """Whether the Debian packaging in root/debian turns the Maven build's tests off (maven.test.skip
    or skipTests in debian/maven.properties)."""
    props = root / "debian" / "maven.properties"
    return props.is_file() and re.search(r"^\s*(maven\.test\.skip|skipTests)\s*=\s*true\b",
                                         props.read_text(errors="replace"), re.MULTILINE) is not None


def build_depends(root: Path) -> str:
    """The Build-Depends (with -Indep and -Arch) of the Debian packaging in root/debian, as one
    dependency string for dpkg-checkbuilddeps and `apt-get satisfy`. The JDK without its GUI
    (default-jdk-headless: the same compiler), and no documentation packages (no javadoc is built)."""
    control = (root / "debian" / "control").read_text(errors="replace").split("\n\n")[0]
    fields = re.findall(r"^Build-Depends(?:-Indep|-Arch)?:(.*(?:\n[ \t].*)*)", control, re.MULTILINE | re.IGNORECASE)
    deps = [d.strip() for f in fields for d in " ".join(f.split()).split(",") if d.strip()]
    deps = [re.sub(r"\bdefault-jdk(?![\w-])", "default-jdk-headless", d) for d in deps
            if not re.match(r"[\w.+-]+-doc\b", d)]
    return ", ".join(deps)


@contextlib.contextmanager
def debian_packages_installed(depends: str, install: bool):
    """Yields what of `depends` this machine lacks ('' when nothing), after installing it with `install`.
    While a build uses its packages it holds a shared lock, and an install waits for an exclusive one:
    dpkg unpacking a package half-writes /usr/share/java and Maven's repository under a running build."""
    if not depends:
        yield ""
        return
    from core.model import cache_root
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "debian-packages.lock", "a") as lock:
        unmet = unmet_debian_packages(depends)
        if unmet and install:
            fcntl.flock(lock, fcntl.LOCK_EX)
            unmet = install_debian_packages(depends)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield unmet


def install_debian_packages(depends: str) -> str:
    """Install what `depends` needs (apt-get satisfy, as root, waiting for another install's lock);
    returns what is still unmet afterwards ('' when all is)."""
    r = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "satisfy", "-y", "-qq", "--no-install-recommends",
                        depends], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    unmet = unmet_debian_packages(depends)
    return f"{unmet} (apt-get: {(r.stderr or r.stdout).strip()[-200:]})" if unmet else ""


def fetch(entry: Entry, dest: Path) -> Path:
    """Download and unpack the project's source; returns its root directory."""
    dest.mkdir(parents=True, exist_ok=True)
    if entry.ecosystem == "local":
        root = dest / "src" / entry.name
        shutil.copytree(entry.path, root, symlinks=True)
        return _prepare(root)
    if entry.ecosystem == "debian":
        archives = _fetch_debian(entry, dest)
    elif entry.ecosystem == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", f"{entry.name}=={entry.version}", "-d", str(dest)]
    elif entry.ecosystem == "npm":
        cmd = ["npm", "pack", "--silent", f"{entry.name}@{entry.version}", "--pack-destination", str(dest)]
    else:
        raise RuntimeError(f"ecosystem {entry.ecosystem} cannot be fetched by this builder")
    if entry.ecosystem != "debian":
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".zip"))]
        if r.returncode != 0 or not archives:
            raise RuntimeError(f"fetch failed: {(r.stderr or r.stdout).strip()[-300:]}")
    if archives[0].suffix == ".zip":
        shutil.unpack_archive(archives[0], dest / "src")
    else:
        with tarfile.open(archives[0]) as tf:
            tf.extractall(dest / "src", filter="data")
    roots = list((dest / "src").iterdir())
    root = roots[0] if len(roots) == 1 and roots[0].is_dir() else dest / "src"
    for packaging in archives[1:]:   # debian/, as dpkg-source lays it over the upstream tree
        shutil.rmtree(root / "debian", ignore_errors=True)
        with tarfile.open(packaging) as tf:
            tf.extractall(root, filter="data")
    return _prepare(root)


def _prepare(root: Path) -> Path:
    """A fetched tree made ready to build: a JavaScript/TypeScript project's dependencies installed
    into its own node_modules (from the registry, no scripts run), the files owned by root."""
    package = _package_json(root)
    if package and not (root / "node_modules").exists() and (package.get("dependencies") or package.get("devDependencies")):
        npm_install(root)
    subprocess.run(["chown", "-R", "0:0", str(root)], check=False)   # bwrap drops caps: own the files
    return root


def _package_json(root: Path) -> dict | None:
    """A JavaScript project's package.json (None when it has none, or none that parses)."""
    try:
        package = json.loads((root / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return package if isinstance(package, dict) else None


def npm_install(root: Path) -> None:
    """Dev dependencies (the test runner) from the registry, no scripts run. A failure is retried
    without optional dependencies (a git-hosted optional package sinks projects whose tests need
    only a few); the error names what npm said (its `npm ERR!` lines), not an empty tail."""
    base = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    for extra in ([], ["--omit=optional", "--legacy-peer-deps"]):
        r = subprocess.run(base + extra, cwd=root, capture_output=True, text=True, timeout=600)
        if r.returncode == 0:
            return
    said = r.stderr + r.stdout
    errors = [ln for ln in said.splitlines() if ln.startswith(("npm ERR!", "npm error"))] or said.splitlines()
    raise RuntimeError("npm install of dev dependencies failed (also without optional ones): "
                       + " | ".join(ln.strip() for ln in errors[:6])[:400])


AUTO = "auto"   # a manifest's test_command that the builder works out from the fetched project


def resolve_entry(entry: Entry, root: Path) -> Entry:
    """The entry with what its fetched source says: a JavaScript/TypeScript project's TAP-speaking
    test command (test_command "auto", from package.json's test script and dev dependencies) and a
    TypeScript project's build step (typescript_build, when the manifest gives no setup), a Java
    project's javac build where its Debian packaging is missing or skips the tests, and a
    Python project's dependencies as its source declares them (declared_dependencies) after the
    manifest's test_deps. Raises ValueError when the project's runner is not one the builder reads."""
    if entry.test_command == AUTO:
        entry = dataclasses.replace(entry, test_command=_npm_test_command(root), runner="tap")
        if entry.language == "typescript" and not entry.setup:
            entry = dataclasses.replace(entry, setup=typescript_build(_package_json(root) or {}, entry.test_command))
    if uses_debian_packaging(entry) and (not has_debian_packaging(root) or debian_skips_tests(root)):
        # no packaging fetched (the mirror lacks it), or Debian does not run these tests (they need what
        # it lacks: jmh, mockito-inline, a network): compile what compiles against the installed jars
        # and run that with the JUnit console launcher
        entry = dataclasses.replace(entry, setup=JAVAC_SETUP, test_command=JAVAC_TEST, runner="junit")
    if entry.language == "python":   # the manifest's list first (pinned versions win), then what the source says
        given = {_requirement_name(d) for d in entry.test_deps}
        declared = [d for d in declared_dependencies(root, entry.name) if _requirement_name(d) not in given]
        entry = dataclasses.replace(entry, test_deps=(*entry.test_deps, *declared))
    return entry


# JavaScript test runners that print TAP, and how (node_modules/.bin: the sandbox has no network)
_TAP_RUNNERS = (("tape", "node_modules/.bin/tape 'test/**/*.js'"), ("ava", "node_modules/.bin/ava --tap"),
                ("mocha", "node_modules/.bin/mocha --reporter tap"), ("tap", "node_modules/.bin/tap --reporter=tap"),
                ("vitest", "node_modules/.bin/vitest run --reporter=tap-flat"))


# in a test script: mocha's arguments (up to the end of its command); among them, what gives way to
# the builder's needs: the reporter (TAP instead), stopping at the first failure, watching
_MOCHA_ARGS = re.compile(r"(?:^|[\s/])_?mocha(?=\s|$)((?:\s+[^\s&|;]+)*)")
_MOCHA_DROPPED = re.compile(r"\s(?:(?:-R|--reporter|-O|--reporter-options?)(?:=\S+|\s+[^\s-]\S*)"
                            r"|(?:-b|--bail|-w|--watch)(?=\s|$))")


def _npm_test_command(root: Path) -> str:
    package = _package_json(root)
    if package is None:
        raise ValueError("test_command auto: no readable package.json")
    script = (package.get("scripts") or {}).get("test", "")
    dev = {**(package.get("dependencies") or {}), **(package.get("devDependencies") or {})}
    if "node --test" in script:
        return "node --test"
    for runner, command in _TAP_RUNNERS:   # the runner the project's own test script names, else any it depends on
        if runner in dev and re.search(rf"\b{runner}\b", script):
            if runner == "mocha" and (m := _MOCHA_ARGS.search(script)):
                # the script's own arguments: which files (dist/test/*.js, a test.ts compiled to test.js)
                # and loaders (--require ts-node/register)
                command += _MOCHA_DROPPED.sub("", m.group(1))
            return command
    for runner, command in _TAP_RUNNERS:
        if runner in dev:
            return command
    raise ValueError(f"test_command auto: the test script {script[:80]!r} uses no runner that prints TAP "
                     f"({', '.join(r for r, _ in _TAP_RUNNERS)}, node --test); give test_command in the manifest")


# what lets a test command load TypeScript itself, so that it needs no build step first
_TS_LOADER = re.compile(r"ts-node|\btsx\b|@babel/register|esbuild-register|@swc/register|ts-mocha")
_BUILD_SCRIPTS = ("build", "compile")
_LIFECYCLE_SCRIPTS = ("prepare", "prepublishOnly", "prepublish", "pretest")   # npm runs them before packing, testing


def typescript_build(package: dict, test_command: str) -> tuple[str, ...]:
    """The setup of a TypeScript project whose tests run its compiled JavaScript (its package's main
    is the build's output, or the tests are compiled too): the project's own build script (`build`,
    `compile`), else the lifecycle script that runs tsc (e.g. `prepare`), through `npm run`, which
    needs no network (the tools are in node_modules/.bin). None when the test command loads
    TypeScript itself (ts-node, tsx) or the project has no build script. A script that is tsc alone
    may end in tsc's status 2, "type errors, output emitted": the JavaScript the tests run is there
    (an old release's sources often no longer type-check against today's versions of its
    dependencies' type declarations), and a type error is what build tasks are about, not the tests."""
    if _TS_LOADER.search(test_command):
        return ()
    scripts = package.get("scripts") or {}
    chosen = next((n for n in _BUILD_SCRIPTS if isinstance(scripts.get(n), str)), None) or \
        next((n for n in _LIFECYCLE_SCRIPTS if re.search(r"\btsc\b", str(scripts.get(n, "")))), None)
    if chosen is None:
        return ()
    tsc_alone = re.fullmatch(r"\s*tsc(\s+[\w./=-]+)*\s*", scripts[chosen])
    return (f"npm run {chosen}" + (" || [ $? -eq 2 ]" if tsc_alone else ""),)


_TEST_REQUIREMENT_FILES = ("test-requirements.txt", "requirements-test.txt", "requirements-tests.txt",
                           "requirements_test.txt", "requirements-dev.txt", "dev-requirements.txt",
                           "requirements/test.txt", "requirements/tests.txt", "requirements/dev.txt",
                           "tests/requirements.txt")


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@(]", req.strip(), 1)[0].lower().replace("_", "-")


def declared_dependencies(root: Path, own_name: str = "") -> list[str]:
    """What a Python source tree says its tests need: its runtime dependencies (the tests import the
    package, which imports them) and its test ones: pyproject.toml's project.dependencies,
    test/tests/testing extras and dependency groups; setup.cfg's install_requires and extras;
    setup.py's literal install_requires/tests_require; the usual test requirement files. Environment
    markers are dropped, the project itself left out; at most 30."""
    import configparser
    import tomllib
    names = ("test", "tests", "testing", "dev")
    found: list[str] = []
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text())
        project = meta.get("project", {})
        found += project.get("dependencies", [])
        found += [r for n in names for r in project.get("optional-dependencies", {}).get(n, [])]
        found += [r for n in names for r in meta.get("dependency-groups", {}).get(n, []) if isinstance(r, str)]
    except (OSError, ValueError, AttributeError):
        pass
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(root / "setup.cfg")
        lines = cfg.get("options", "install_requires", fallback="").splitlines()
        lines += [r for n in names for r in cfg.get("options.extras_require", n, fallback="").splitlines()]
        found += [r for r in lines if r.strip()]
    except configparser.Error:
        pass
    if (root / "setup.py").is_file():
        text = (root / "setup.py").read_text(errors="replace")
        for key in ("install_requires", "tests_require"):
            if m := re.search(rf"{key}\s*=\s*\[(.*?)\]", text, re.DOTALL):
                # each string literal whole: a marker quotes inside it ("colorama ; sys_platform=='win32'")
                found += [a or b for a, b in re.findall(r'"([^"]*)"|\'([^\']*)\'', m.group(1))]
    for name in _TEST_REQUIREMENT_FILES:
        if (root / name).is_file():
            found += [ln for ln in (root / name).read_text(errors="replace").splitlines()
                      if ln.strip() and not ln.lstrip().startswith(("#", "-"))]
    own = own_name.lower().replace("_", "-")
    reqs = {}
    for r in found:
        req = r.split(";")[0].split("#")[0].strip()
        if req and _requirement_name(req) not in (own, "", "pytest") and re.match(r"^[A-Za-z0-9]", req):
            reqs.setdefault(_requirement_name(req), req)
    return sorted(reqs.values())[:30]


def _compiled_stems(built: Path) -> set[str]:
    """Source names that a build tree holds objects of: cmake's foo.c.o, make's foo.o, libtool's
    libx_la-foo.lo / foo.lo."""
    stems = set()
    for p in built.rglob("*"):
        if p.suffix in (".o", ".lo", ".obj") and p.is_file():
            stem = p.name.rsplit(".", 1)[0]
            stems.add(stem)
            stems.add(stem.rsplit("-", 1)[-1])
    return stems


def source_files(root: Path, language: str, built: Path | None = None) -> list[Path]:
    """The project's own (non-test) source files, most useful first. For compiled languages with a
    built tree, sources that were compiled come first, then headers; other files are left out."""
    exts = SOURCE_EXT.get(language, ())
    files = sorted(p for p in root.rglob("*") if p.suffix in exts and p.is_file() and not p.is_symlink()
                   and "test" not in str(p.relative_to(root)).lower() and "setup" not in p.name
                   and not p.name.endswith(".d.ts") and not SKIP_DIRS & {d.lower() for d in p.relative_to(root).parts[:-1]})
    if language not in COMPILED or built is None:
        return files
    stems = _compiled_stems(built)
    if not stems:   # no object files kept (a build that deletes them): sources first, then headers
        return [p for p in files if p.suffix not in HEADERS] + [p for p in files if p.suffix in HEADERS]
    compiled = [p for p in files if p.suffix not in HEADERS and (p.name in stems or p.stem in stems)]
    return compiled + [p for p in files if p.suffix in HEADERS]


def _comment(line: str) -> bool:
    return line.strip().startswith(("#", "//", "/*", "*"))


def fault_candidates(root: Path, language: str, built: Path | None = None) -> list[Mutation]:
    """Mutations of real source lines (not tests), each a unique line so it applies exactly once."""
    out = []
    for path in source_files(root, language, built):
        text = path.read_text(errors="replace")
        for name, old, new, cause in OPERATORS:
            for line in text.splitlines():
                if old in line and text.count(line) == 1 and not _comment(line):
                    out.append(Mutation(f"{name}", str(path.relative_to(root)), line,
                                        line.replace(old, new, 1), cause))
                    break
    return out


@dataclass
class Outcome:
    entry: Entry
    tasks: list[Task]
    excluded: str = ""
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)   # unobservable facts, by kind
    flaky_faults: int = 0
    duration_s: float = 0.0
    no_wheelhouse: str = ""  # why a Python project got no install and run_script tasks (pip's error)
    cached: bool = False     # reused from an earlier build (tasks.build), not built now
    node: str = ""           # the Ray node that built it (tasks.build)

    def to_dict(self) -> dict:
        return {"entry": dataclasses.asdict(self.entry), "tasks": [dataclasses.asdict(t) for t in self.tasks],
                "excluded": self.excluded, "dropped": self.dropped, "flaky_faults": self.flaky_faults,
                "duration_s": self.duration_s, "no_wheelhouse": self.no_wheelhouse}

    @staticmethod
    def from_dict(d: dict) -> "Outcome":
        e = d["entry"]
        return Outcome(Entry(**{**e, "setup": tuple(e["setup"]), "test_deps": tuple(e.get("test_deps", ()))}),
                       [Task.from_dict(t) for t in d["tasks"]],
                       d["excluded"], d["dropped"], d["flaky_faults"], d["duration_s"], d.get("no_wheelhouse", ""))


def suite_task(entry: Entry, tid: str, repo: str, env: TaskEnvironment, chk, mutation: dict | None, cap: int,
               dropped: dict[str, int], listing: str = "", followups: list[Look] = ()) -> Task:
    """A task about a checked test run (its first of two alike): run_tests with the command in the
    request, or (for half the tasks, by a hash of the id, and when `listing` is given: what `ls`
    printed in the repository) discover_tests, a request that names no command, whose reference
    first looks at the repository. `followups`: what the reference runs after the tests (their
    failure lines, when the capped output hides the failing tests' names; the look at the source the
    failure points to). The mutation, if any, is metadata unless the outputs show where."""
    results, code, output = chk.results[0], chk.exit_codes[0], chk.outputs[0]
    facts = result_facts(results, entry.runner, output, cap, followups) + ([cause_fact(mutation)] if mutation else [])
    if not any(f.kind == "counts" for f in facts):   # the runner printed no totals
        dropped["counts"] = dropped.get("counts", 0) + 1
    if code == 0 and not [f for f in facts if f.kind == "counts" and f.evidence]:   # the exit status says they pass
        facts.append(Fact("outcome", "the tests pass", [r"pass|succe|\bok\b"], ["<exit_code>0</exit_code>"]))
    runs = [Run(entry.test_command, output, code)]
    if listing and kinds.asks_goal(tid):
        category, request = "discover_tests", kinds.phrasing(tid, GOAL_REQUESTS, name=entry.name)
        runs.insert(0, Run("ls", listing, 0))
    else:
        category, request = "run_tests", kinds.phrasing(tid, REQUESTS, name=entry.name, cmd=entry.test_command)
    return make_task(entry, tid, category, request, runs, facts, env, repo, entry.setup, cap, dropped,
                     {"tests": results} | ({"mutation": mutation} if mutation else {}), followups)


MISSING_PACKAGES = "missing Debian packages"   # an exclusion the next build retries (once they are installed)


async def build_project(entry: Entry, out: Path, work: Path, sandbox_cfg, cap: int = OBSERVATION_CAP,
                        apt_install: bool = False) -> Outcome:
    """Build one project's tasks into `out`. `apt_install`: install the Build-Depends of a project
    built by its Debian packaging when they are missing (as root); without it such a project is
    excluded, naming them."""
    try:
        root = await asyncio.to_thread(fetch, entry, work / entry.name)
    except Exception as e:   # noqa: BLE001 - any fetch failure excludes the project, with its reason
        return Outcome(entry, [], f"fetch: {e}")
    depends = build_depends(root) if uses_debian_packaging(entry) and has_debian_packaging(root) else ""
    with debian_packages_installed(depends, apt_install) as unmet:
        if unmet:
            return Outcome(entry, [], f"{MISSING_PACKAGES}: {unmet}; install them as root (`apt-get satisfy` with "
                                      "this list) or build with --apt-install")
        return await _build_fetched(entry, root, out, work, sandbox_cfg, cap, depends)


async def _build_fetched(entry: Entry, root: Path, out: Path, work: Path, sandbox_cfg, cap: int,
                         depends: str) -> Outcome:
    """build_project once the source is fetched and the Debian packages it needs (`depends`) are there."""
    given_setup = entry.setup
    try:
        entry = resolve_entry(entry, root)
    except ValueError as e:
        return Outcome(entry, [], f"cannot_run: {e}")
    base = base_name(entry)
    shared = ""
    if (root / "node_modules").is_dir():   # once per project, bound read-only into each task's sandbox
        shared = f"shared/{base}/node_modules"
        (out / shared).parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / shared, ignore_errors=True)
        shutil.move(str(root / "node_modules"), str(out / shared))
    try:
        venv = await asyncio.to_thread(project_venv, entry, out) if entry.language == "python" else ""
    except Exception as e:   # noqa: BLE001 - a test dependency that cannot be installed excludes the project
        return Outcome(entry, [], f"cannot_run: {e}")
    env = environment(shared, venv, debian_packages=depends)
    build_env = env.resolved(str(out))   # during the build: absolute paths
    built = work / f"{entry.name}.built"   # the tree after the setup (a build): fault runs rebuild from it
    shutil.rmtree(built, ignore_errors=True)
    chk = await check_project(str(root), entry, sandbox_cfg, environment=build_env, snapshot=str(built), probe="ls")
    if chk.setup_failed and entry.setup and not given_setup:
        # the build step the builder chose where the manifest gave none fails (today's type declarations
        # beyond the project's tsc, a build tool too old for this Node); its tests may not need it (ava,
        # ts-node compile them). A setup the builder replaced (Java's javac fallback) is not tried back
        entry = dataclasses.replace(entry, setup=given_setup)
        shutil.rmtree(built, ignore_errors=True)
        chk = await check_project(str(root), entry, sandbox_cfg, environment=build_env, snapshot=str(built),
                                  probe="ls")
    if chk.verdict != "runs":
        return Outcome(entry, [], f"{chk.verdict}: {chk.reason}")
    outcome = Outcome(entry, [])
    copy_source(root, out / "repos" / base)
    shown = await show_failures(sandbox_cfg, str(out / "repos" / base), build_env, entry,
                                Run(entry.test_command, chk.outputs[0], chk.exit_codes[0]), chk.results[0], cap, 300)
    outcome.tasks.append(suite_task(entry, base, f"repos/{base}", env, chk, None, cap, outcome.dropped, chk.probe,
                                    shown))
    baseline_fail = {t for t, s in chk.results[0].items() if failed(s)}
    prebuilt = built if built.is_dir() else None
    # a fault that makes a test loop forever must not cost the full timeout: a few times the clean run
    fault_timeout = min(300.0, max(30.0, 4 * max(chk.durations)))
    tries = MAX_FAULT_TRIES_COMPILED if entry.language in COMPILED else MAX_FAULT_TRIES
    for m in fault_candidates(root, entry.language, prebuilt)[:tries]:
        if len(outcome.tasks) > MAX_FAULTS:
            break
        tid = task_id(base, m.name, len(outcome.tasks))
        frepo = out / "repos" / tid      # the task's snapshot: the clean release with the fault
        copy_source(root, frepo)
        line = apply_mutation(frepo, m)
        run_dir = frepo
        if prebuilt:   # run on a copy of the built tree: the setup then rebuilds only what the fault touches
            run_dir = work / f"{entry.name}.fault"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(prebuilt, run_dir, symlinks=True)
            apply_mutation(run_dir, m)
        # run twice, like the clean run: a fault whose results differ between runs is flaky
        fchk = await check_project(str(run_dir), entry, sandbox_cfg, timeout_s=fault_timeout, setup_timeout_s=300,
                                   environment=build_env, probe="ls")
        newly = {t for t, s in (fchk.results[0] if fchk.results else {}).items() if failed(s)} - baseline_fail
        if fchk.verdict != "runs" or not newly:   # not caught by the tests, or flaky: no task
            outcome.flaky_faults += fchk.verdict == "flaky"
            shutil.rmtree(frepo)
            if prebuilt:
                shutil.rmtree(run_dir, ignore_errors=True)
            continue
        mutation = mutation_record(m, line)
        run = Run(entry.test_command, fchk.outputs[0], fchk.exit_codes[0])
        looks = [*await show_failures(sandbox_cfg, str(frepo), build_env, entry, run, fchk.results[0], cap, 300),
                 *await look_at_failure(sandbox_cfg, str(frepo), build_env, run, cap)]
        outcome.tasks.append(suite_task(entry, tid, f"repos/{tid}", env, fchk, mutation, cap, outcome.dropped,
                                        fchk.probe, looks))
        if not any(t.category == "run_one_test" for t in outcome.tasks):   # one per project, on this fault's tree
            one = await kinds.one_test_task(entry, task_id(base, "one", len(outcome.tasks)), str(run_dir), f"repos/{tid}",
                                            str(frepo), fchk, env, build_env, sandbox_cfg, fault_timeout, cap,
                                            outcome.dropped, mutation)
            outcome.tasks += [one] if one else []
        if prebuilt:
            shutil.rmtree(run_dir, ignore_errors=True)
    built_task = await kinds.build_task(entry, root, out, base, env, build_env, sandbox_cfg,
                                        source_files(root, entry.language, prebuilt), cap, outcome.dropped)
    lint = await kinds.lint_task(entry, root, out, base, env, build_env, sandbox_cfg, cap, outcome.dropped)
    outcome.tasks += [t for t in (built_task, lint) if t]
    if entry.language == "python":
        outcome.tasks += await python_tasks(entry, root, out, base, shared, venv, sandbox_cfg, cap, outcome)
    return outcome


async def python_tasks(entry: Entry, root: Path, out: Path, base: str, shared: str, venv: str, sandbox_cfg, cap: int,
                       outcome: Outcome) -> list[Task]:
    """A Python project's install tasks (with its wheelhouse bound) and its run_script task (its
    console scripts, from its own wheel's metadata, or a `__main__` module). No install tasks for a
    tree without packaging metadata (nothing to install), nor for a project pip cannot build a
    wheelhouse for (the reason kept in corpus.json, `no_wheelhouse`)."""
    env = environment(shared, venv)
    tasks, scripts = [], ()
    if any((root / n).is_file() for n in _METADATA_FILES):
        try:
            wheels = await asyncio.to_thread(project_wheels, entry, root, out)
        except Exception as e:   # noqa: BLE001 - any failure only costs these tasks, with the reason kept
            outcome.no_wheelhouse = str(e)[:300]
        else:
            scripts = wheels.scripts
            install_env = environment(shared, venv, wheels.path)
            tasks = await kinds.install_tasks(entry, root, out, base, wheels, install_env, install_env.resolved(str(out)),
                                              sandbox_cfg, cap, outcome.dropped)
    script = await kinds.script_task(entry, root, out, base, scripts, env, env.resolved(str(out)), sandbox_cfg, cap,
                                     outcome.dropped)
    return tasks + ([script] if script else [])
