#!/usr/bin/env bash
# Long reliability runs (not part of `make test`): the fuzz suite with many more examples, the
# slow-marked reliability tests, and a bounded soak against a real server.
#
#   scripts/reliability.sh [SOAK_SECONDS=120] [SOAK_RATE_PER_S=20]
#
# Env: FUZZ_EXAMPLES (default 100). Exits non-zero on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS="${1:-120}"
SOAK_RATE="${2:-20}"
PY="${PY:-.venv/bin/python}"

echo "== fuzz: ${FUZZ_EXAMPLES:-100} examples per operation"
NOMINAL_FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-100}" "$PY" -m pytest -q -p no:cacheprovider -s \
    tests/reliability/test_fuzz.py 2>&1 | grep -v '^{"ts' | grep -E '^fuzz:|passed|failed|error'

echo "== reliability suite, slow tests included"
"$PY" -m pytest -q -p no:cacheprovider tests/reliability -m "slow or not slow"

echo "== soak: ${SOAK_SECONDS} s at ${SOAK_RATE} req/s"
"$PY" -m tests.reliability.soak "$SOAK_SECONDS" "$SOAK_RATE"
