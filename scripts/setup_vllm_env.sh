#!/usr/bin/env bash
# Create (or reuse) the vLLM virtual environment that the vLLM adapter and its tests run in.
#
#   scripts/setup_vllm_env.sh            # create or reuse <repo>/.venv-vllm
#   REVATI_VLLM_VENV=/path scripts/setup_vllm_env.sh   # keep the venv elsewhere (e.g. across clones)
#   scripts/setup_vllm_env.sh --force    # rebuild even if the marker says it is complete
#   scripts/setup_vllm_env.sh --check    # only say whether it is complete (exit 0) or not (1)
#
# Result: vllm==0.32.0 on the CPU build of torch==2.13.0, without torchvision / torchaudio /
# torchcodec (PyPI's builds of them are CUDA builds that do not load beside torch 2.13.0+cpu;
# vLLM's text-only import path does not need them), and this repository installed editable.
# See docs/vllm.md.
#
# Idempotent: a marker file in the venv records the pinned versions, the checkout and a hash of
# its packaging files. When it matches and the installed versions agree, nothing is installed.
# Non-interactive (no prompts, stdin closed); fit for CI.
set -euo pipefail

VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
# Installed by vLLM's requirements but unusable beside the CPU build of torch (see docs/vllm.md).
BROKEN_BESIDE_CPU_TORCH=(torchvision torchaudio torchcodec)
MARKER_SCHEMA="1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REVATI_VLLM_VENV:-$ROOT/.venv-vllm}"
MARKER="$VENV/.revati-vllm-env"
LOG="$VENV/setup.log"
WHEEL_DIR="${REVATI_TORCH_WHEEL_DIR:-/opt/wheels}"

NAME=setup_vllm_env
HELP_LINES="2,16p"
# shellcheck source=scripts/venv_lib.sh
. "$ROOT/scripts/venv_lib.sh"
export VLLM_NO_USAGE_STATS=1

# The pinned versions: the first part of the marker.
base_marker() {
    printf 'schema=%s\nvllm=%s\ntorch=%s+cpu\nremoved=%s\n' \
        "$MARKER_SCHEMA" "$VLLM_VERSION" "$TORCH_VERSION" "${BROKEN_BESIDE_CPU_TORCH[*]}"
}

# Cheap check of the installed versions (reads metadata only: no import of vllm or torch).
base_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$VLLM_VERSION" "$TORCH_VERSION" "${BROKEN_BESIDE_CPU_TORCH[@]}" <<'PY'
import sys, importlib.metadata as md
vllm_v, torch_v, *broken = sys.argv[1:]
def ver(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
ok = ver("vllm") == vllm_v and ver("torch") == torch_v + "+cpu"
ok = ok and all(ver(b) is None for b in broken)
sys.exit(0 if ok else 1)
PY
}

# --- 0. reuse -----------------------------------------------------------------------------------
venv_reuse "vllm $VLLM_VERSION, torch $TORCH_VERSION+cpu"

# --- 1. the venv and pip -------------------------------------------------------------------------
venv_create

# --- 2. pip's site configuration: the torch cap -------------------------------------------------
# This machine's pip configuration (/etc/xdg/pip) names a constraints file that caps torch and
# torchvision. vLLM 0.32.0 needs torch==2.13.0, torchvision==0.28.0 and torchaudio==2.11.0 to
# resolve; if the cap excludes one, the local wheel folder is passed explicitly below.
site_constraints "torch==$TORCH_VERSION" torchvision==0.28.0 torchaudio==2.11.0 \
    "vllm==$VLLM_VERSION"
PIP_EXTRA=()

# The CPU build of torch lies on local disk; naming the file keeps pip from ever taking PyPI's
# multi-GB CUDA build of torch 2.13.0.
TORCH_REQ="torch==$TORCH_VERSION"
TORCH_WHEEL="$(ls "$WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$TORCH_WHEEL" ]; then
    say "torch: using the local CPU build $TORCH_WHEEL"
    TORCH_REQ="$TORCH_WHEEL"
    PIP_EXTRA+=(--find-links "$WHEEL_DIR")
else
    die "no torch-$TORCH_VERSION+cpu wheel in $WHEEL_DIR (set REVATI_TORCH_WHEEL_DIR); PyPI's torch $TORCH_VERSION is a CUDA build of several GB"
fi

# --- 3. vLLM and this repo, in one resolve -------------------------------------------------------
say "step 4/6: installing vllm==$VLLM_VERSION, torch $TORCH_VERSION+cpu and revati (-e $ROOT); full log: $LOG"
t_install=$(date +%s)
pip_ install "${PIP_EXTRA[@]}" "$TORCH_REQ" "vllm==$VLLM_VERSION" -e "$ROOT[test]" \
    || die "pip install failed (see $LOG)"
say "pip install took $(( $(date +%s) - t_install ))s"

# --- 4. remove what cannot load beside torch 2.13.0+cpu ------------------------------------------
# PyPI's torchvision 0.28.0 / torchaudio 2.11.0 / torchcodec are CUDA builds: their compiled parts
# need libc10_cuda.so / libtorch_cuda.so, which the CPU torch does not ship ("operator
# torchvision::nms does not exist" at `import vllm`). transformers and vLLM import them only when
# installed, so the text-only import path is consistent without them.
say "step 5/6: removing vision/audio packages that do not load beside torch $TORCH_VERSION+cpu"
loads() {
    case "$1" in
        torchvision) "$VPY" -c "import torch, torchvision; torch.ops.torchvision.nms" ;;
        torchaudio) "$VPY" -c "import torchaudio, torchaudio.functional" ;;
        *) "$VPY" -c "import $1" ;;
    esac >/dev/null 2>&1
}
for pkg in "${BROKEN_BESIDE_CPU_TORCH[@]}"; do
    if "$VPY" -m pip show -q "$pkg" >/dev/null 2>&1; then
        if loads "$pkg"; then state="it loads, removed anyway to keep the env as documented"; else state="does not load"; fi
        "$VPY" -m pip uninstall -y -q "$pkg" >>"$LOG" 2>&1 || die "could not uninstall $pkg"
        say "  removed $pkg ($state)"
    fi
done

# --- 5. verify ----------------------------------------------------------------------------------
say "step 6/6: verifying"
"$VPY" - <<'PY' || die "import check failed"
import importlib.metadata as md
import vllm, vllm.entrypoints.openai.api_server  # noqa: F401
import revati.adapters  # noqa: F401
print(f"    vllm {vllm.__version__}, torch {md.version('torch')}, transformers {md.version('transformers')}, "
      f"tokenizers {md.version('tokenizers')}, triton {md.version('triton')}")
PY
revati_ok || die "revati is not installed editable from $ROOT"
# With no GPU and no platform plugin, vLLM resolves UnspecifiedPlatform and every `vllm`
# subcommand dies while building its parser ("Failed to infer device type",
# vllm/config/device.py:55): the CLI builds all subparsers, `serve` included. Revati's platform
# plugin is what fixes that; this check names vLLM's CPU platform instead.
VLLM_TARGET_DEVICE=cpu "$VENV/bin/vllm" --help >/dev/null 2>>"$LOG" \
    || die "'vllm --help' failed (see $LOG)"
say "  'vllm --help' ok (VLLM_TARGET_DEVICE=cpu)"
VLLM_TARGET_DEVICE=cpu "$VENV/bin/vllm" bench serve --help >/dev/null 2>>"$LOG" \
    || die "'vllm bench serve --help' failed (see $LOG)"
say "  'vllm bench serve --help' ok (VLLM_TARGET_DEVICE=cpu)"

expected_marker >"$MARKER"
say "done: $VENV is complete ($(du -sh "$VENV" | cut -f1)); activate with: source $VENV/bin/activate"
