#!/usr/bin/env bash
# Create (or reuse) .venv with revati installed editable, its test tools, torch 2.13.0
# (the CPU build, served from local disk here) and transformers 5.17.0 (the accuracy harness).
# Idempotent: a complete .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
marker=.venv/.revati-ready
want="torch==2.13.0 $(sha256sum pyproject.toml setup.py adapters/clock/_vclock.c | sha256sum | cut -c1-16)"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    exit 0
fi
echo "revati: preparing .venv (first run takes a few minutes)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install --disable-pip-version-check -e '.[test,hf]' 'torch==2.13.0'
     } >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "revati: installing into .venv failed (full log above)" >&2
    exit 1
fi
echo "$want" > "$marker"
echo "revati: .venv ready" >&2
