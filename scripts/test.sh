#!/usr/bin/env bash
# Run the test suite in the project's venv. Extra arguments go to pytest.
# pytest exits 5 when it collected no test: that is a failure of the suite, said plainly.
set -uo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
.venv/bin/python -m pytest -v -p no:cacheprovider --durations=25 "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests" >&2; fi
exit $rc
