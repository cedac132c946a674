#!/usr/bin/env bash
# The embedded default, end to end, on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false
.venv/bin/terminus model build-tiny
.venv/bin/terminus model chat --config tiny_cpu
