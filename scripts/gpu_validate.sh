#!/usr/bin/env bash
# The real-GPU side of the accuracy harness (docs/validation.md), on a machine with a GPU, a
# CUDA torch and transformers 5.17 but without this project installed (a lent machine: no
# network, nothing built): the source folders are put on the path under the `revati` name.
#   scripts/gpu_validate.sh OUTDIR [gpu_run options]
set -uo pipefail
out=${1:?usage: scripts/gpu_validate.sh OUTDIR [gpu_run options]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
shim=$(mktemp -d)
mkdir -p "$shim/revati"
for d in revatid adapters predictors; do ln -s "$root/$d" "$shim/revati/$d"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"${PYTHON:-python3}" -m revati.revatid.validate.gpu_run --out "$out" "$@"
