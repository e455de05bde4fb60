#!/usr/bin/env bash
# The test command: set up from nothing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# two workers on the 2-core CI machine (-n 0 runs in one process); a test file stays on one worker
exec .venv/bin/python -m pytest -q --durations=30 -n "${TBN_TVM_TEST_WORKERS:-auto}" --dist loadfile "$@"
