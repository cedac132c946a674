"""Write a manifest of real projects at paper scale from Debian bookworm's source index, plus the
most used PyPI (1,000) and npm (300) packages from popularity lists you supply (TSV files with a header naming
`name`, `version` and a rank or monthly-downloads column).

    .venv/bin/python scripts/discover_projects.py --out tasks/manifests/paper.jsonl \
        --pypi-top pypi.tsv --npm-top npm.tsv

Debian's upstream tarballs keep their tests more often than PyPI sdists or npm tarballs, their
versions are pinned by the archive, and their Build-Depends say how a project is built and tested.
A project is listed when its build dependencies match one recipe below; the recipe gives the
commands. Nothing here checks that the tests run: `terminus tasks build` does, and excludes (with a
reason) what does not. The measured yields are in docs/tasks.md.

    python       dh-python + python3-pytest, no C extension: pytest in the project's own venv with
                 its python3-* build dependencies from PyPI (test_deps)
    javascript   dh-nodejs + tape, mocha, tap or ava: test_command auto (the builder reads package.json
                 for the runner and its TAP reporter); dependencies from the npm registry
    typescript   the same, with node-typescript among the build dependencies
    java         maven-debian-helper + junit4/junit5: the package's own Maven build, offline, as Debian
                 builds it (debian/ fetched too, Build-Depends installed by `tasks build --apt-install`)
    c, cpp       cmake + ctest, or autotools + `make check` (C++ when it builds with gtest/boost/catch2/Qt)
    pypi         the most used sdists: pytest in the project's venv, its test extras as test_deps
    npm          the most used packages: test_command "auto" (the builder reads package.json)
"""
from __future__ import annotations

import argparse
import json
import lzma
import re
import urllib.request
from collections import Counter

SOURCES = "http://deb.debian.org/debian/dists/bookworm/main/source/Sources.xz"
PYTEST = "python3 -m pytest -v -p no:cacheprovider -p no:warnings"
CMAKE = ["cmake -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON", "cmake --build build -j2"]
AUTOTOOLS = ["[ -f configure ] || autoreconf -fi", "[ -f config.status ] || ./configure", "make -j2"]
# Java: the package's own Maven build, as Debian builds it (maven-debian-helper: its poms patched to the
# versions in /usr/share/maven-repo, Maven offline), the build fetching debian/ with the source and its
# Build-Depends installed (`tasks build --apt-install`); Surefire prints each test (plain report on the console)
MAVEN_SETUP = ["test -e debian/stamp-poms-patched || dh_auto_configure",   # once: the built tree keeps it
               "dh_auto_build -- -B test-compile"]
MAVEN_TEST = "dh_auto_test -- -B test -Dsurefire.useFile=false -Dsurefire.reportFormat=plain"
# build tools and documentation: not what a project's tests import
PY_TOOLS = re.compile(r"^python3-(all|dev|all-dev|setuptools.*|wheel|pip|pytest.*|sphinx.*|docutils|pbr|poetry.*|"
                      r"hatch.*|flit.*|pdm.*|installer|build|tox|coverage|mock|nose.*|myst.*|recommonmark|"
                      r"numpydoc|alabaster|furo|mypy|flake8|pycodestyle|pyflakes|black|isort|cython.*|"
                      r"pkg-resources|importlib-metadata|typing-extensions|toml|tomli)$")
CPP_HINTS = re.compile(r"libgtest-dev|googletest|libboost|catch2|qtbase5-dev|qt6-base-dev|libgmock")


def parse_sources(text: str):
    """One dict per stanza of a Debian Sources index: Package, Version, Build-Depends (names only)."""
    for stanza in text.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            deps = fields.get("Build-Depends", "") + "," + fields.get("Build-Depends-Indep", "")
            fields["deps"] = {re.split(r"[\s(<\[:]", d.strip())[0] for d in re.split(r"[,|]", deps) if d.strip()}
            yield fields


def recipe(src: dict) -> dict | None:
    """The manifest line for a Debian source package, or None when no recipe fits."""
    deps, name, version = src["deps"], src["Package"], src["Version"]
    base = {"name": name, "ecosystem": "debian", "version": version}
    if "dh-python" in deps or "dh-sequence-python3" in deps:
        if "python3-pytest" not in deps or {"python3-all-dev", "python3-dev", "cython3"} & deps:
            return None
        test_deps = sorted(d.removeprefix("python3-") for d in deps if d.startswith("python3-") and not PY_TOOLS.match(d))
        return base | {"language": "python", "runner": "pytest", "test_command": PYTEST, "test_deps": test_deps[:12]}
    if "dh-sequence-nodejs" in deps or "pkg-js-tools" in deps:
        language = "typescript" if {"node-typescript", "ts-node"} & deps else "javascript"
        if {"node-tape", "mocha", "node-mocha", "node-tap", "node-ava"} & deps:   # a runner that prints TAP
            return base | {"language": language, "runner": "tap", "test_command": "auto"}
        return None
    if "maven-debian-helper" in deps and {"junit4", "junit5"} & deps:
        return base | {"language": "java", "runner": "surefire", "setup": MAVEN_SETUP, "test_command": MAVEN_TEST}
    if {"libgtk-3-dev", "libgtk2.0-dev", "qtbase5-dev", "qt6-base-dev", "libx11-dev"} & deps:
        return None   # a GUI: its tests want a display
    language = "cpp" if CPP_HINTS.search(" ".join(sorted(deps))) else "c"
    if "cmake" in deps and name.startswith("lib"):
        return base | {"language": language, "runner": "ctest", "setup": CMAKE,
                       "test_command": "ctest --test-dir build --timeout 120"}
    if {"dh-autoreconf", "autoconf", "automake"} & deps and name.startswith("lib"):
        return base | {"language": language, "runner": "automake", "setup": AUTOTOOLS, "test_command": "make check"}
    return None


def top_packages(path: str, n: int) -> list[tuple[str, str]]:
    """(name, version) of the n best-ranked rows of a popularity TSV (rank ascending, or downloads
    descending)."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    head = [h.lower() for h in rows[0]]
    name, version = head.index("name"), head.index("version")
    rank = next((i for i, h in enumerate(head) if h.startswith("rank")), None)
    downloads = next((i for i, h in enumerate(head) if "download" in h), None)
    good = [r for r in rows[1:] if len(r) > max(name, version) and r[version]]
    if rank is not None:
        good = sorted((r for r in good if r[rank].isdigit()), key=lambda r: int(r[rank]))
    elif downloads is not None:
        good = sorted((r for r in good if r[downloads].isdigit()), key=lambda r: -int(r[downloads]))
    return [(r[name], r[version]) for r in good[:n]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-language", type=int, default=400, help="at most this many projects per language")
    ap.add_argument("--pypi-top", default="", help="popularity TSV of PyPI packages")
    ap.add_argument("--npm-top", default="", help="popularity TSV of npm packages")
    ap.add_argument("--pypi-count", type=int, default=1000, help="packages taken from the PyPI list (the best yield: "
                    "2.2 tasks per project in the measured sample)")
    ap.add_argument("--npm-count", type=int, default=300, help="packages taken from the npm list")
    args = ap.parse_args()
    with urllib.request.urlopen(SOURCES, timeout=120) as r:
        text = lzma.decompress(r.read()).decode("utf-8", errors="replace")
    lines, per = [], Counter()
    latest = {s["Package"]: s for s in parse_sources(text)}   # a package listed twice: its last stanza
    for src in sorted(latest.values(), key=lambda s: s["Package"]):
        entry = recipe(src)
        if entry and per[entry["language"]] < args.per_language:
            per[entry["language"]] += 1
            lines.append(json.dumps(entry))
    name_ok = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    if args.pypi_top:
        for name, version in top_packages(args.pypi_top, args.pypi_count):
            if name_ok.match(name) and re.match(r"^[0-9][0-9A-Za-z.+-]*$", version):
                per["python (pypi)"] += 1
                lines.append(json.dumps({"name": name, "ecosystem": "pypi", "version": version, "language": "python",
                                         "runner": "pytest", "test_command": PYTEST}))
    if args.npm_top:
        for name, version in top_packages(args.npm_top, 2 * args.npm_count):
            if name_ok.match(name) and re.match(r"^[0-9][0-9A-Za-z.+-]*$", version) and per["javascript (npm)"] < args.npm_count:
                per["javascript (npm)"] += 1
                lines.append(json.dumps({"name": name, "ecosystem": "npm", "version": version, "language": "javascript",
                                         "runner": "tap", "test_command": "auto"}))
    header = ["# Paper-scale manifest: written by scripts/discover_projects.py from Debian bookworm's source index",
              "# (recipes in that script). Yields measured on a sample: docs/tasks.md. " + ", ".join(
                  f"{lang} {n}" for lang, n in sorted(per.items()))]
    with open(args.out, "w") as f:
        f.write("\n".join(header + lines) + "\n")
    print(f"{len(lines)} projects: {dict(per)} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
