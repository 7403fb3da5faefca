#!/usr/bin/env bash
# The test suite: prepares .venv, then runs pytest (arguments are passed on).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/dev_env.sh || exit 1
.venv/bin/python -m pytest "$@"
code=$?
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 0
fi
exit "$code"
