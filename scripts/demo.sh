#!/usr/bin/env bash
# The embedded default, end to end, on this machine's CPU: build the tiny model and the generated task
# family, collect teacher demonstrations, SFT, GRPO with the rules judge, evaluate on held-out projects.
# Writes runs/tiny_cpu/ (summary.json, metrics.jsonl, rewards.png, checkpoints/, hf/, wandb/).
# Extra arguments are config overrides, e.g. `bash scripts/demo.sh trainer.grpo.steps=4`.
set -euo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false
export WANDB_MODE=${WANDB_MODE:-offline} VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING}
.venv/bin/terminus train --config tiny_cpu "$@"
