#!/usr/bin/env bash
# The test suite, in two environments:
#   1. .venv (scripts/dev_env.sh): daemon, virtual time, virtual CUDA, predictors, validation;
#   2. .venv-vllm (scripts/setup_vllm_env.sh): vLLM serving on virtual GPUs (tests/vllm).
# Arguments are passed to pytest in both. REVATI_SKIP_VLLM=1 runs the first stage only.
set -uo pipefail
cd "$(dirname "$0")/.."

pytest_in() {  # pytest's exit 5 (no test collected) is not a failure here
    "$@"
    local code=$?
    if [ "$code" -eq 5 ]; then
        echo "pytest collected no tests: $*" >&2
        return 0
    fi
    return "$code"
}

bash scripts/dev_env.sh || exit 1
pytest_in .venv/bin/python -m pytest --ignore=tests/vllm "$@"
status=$?

if [ "${REVATI_SKIP_VLLM:-0}" != 1 ]; then
    if bash scripts/setup_vllm_env.sh; then
        pytest_in .venv-vllm/bin/python -m pytest tests/vllm "$@" || status=1
    else
        echo "revati: the vLLM environment could not be prepared" >&2
        status=1
    fi
fi
exit "$status"
