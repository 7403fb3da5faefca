#!/usr/bin/env bash
# The test suite, in three environments:
#   1. .venv (scripts/dev_env.sh): daemon, virtual time, virtual CUDA, predictors, validation;
#   2. .venv-vllm (scripts/setup_vllm_env.sh): vLLM serving on virtual GPUs (tests/vllm);
#   3. .venv-sglang (scripts/setup_sglang_env.sh): SGLang serving on virtual GPUs (tests/sglang).
# Arguments are passed to pytest in each. REVATI_SKIP_VLLM=1 / REVATI_SKIP_SGLANG=1 leave out
# stage 2 / 3.
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
pytest_in .venv/bin/python -m pytest --ignore=tests/vllm --ignore=tests/sglang "$@"
status=$?

framework_stage() {  # NAME: its environment from scripts/setup_NAME_env.sh, then tests/NAME
    local name=$1 skip=$2
    shift 2
    [ "$skip" = 1 ] && return 0
    if bash "scripts/setup_${name}_env.sh"; then
        pytest_in ".venv-${name}/bin/python" -m pytest "tests/${name}" "$@" || status=1
    else
        echo "revati: the ${name} environment could not be prepared" >&2
        status=1
    fi
}

framework_stage vllm "${REVATI_SKIP_VLLM:-0}" "$@"
framework_stage sglang "${REVATI_SKIP_SGLANG:-0}" "$@"
exit "$status"
