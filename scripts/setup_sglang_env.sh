#!/usr/bin/env bash
# Create (or reuse) the SGLang virtual environment that the SGLang adapter and its tests run in.
#
#   scripts/setup_sglang_env.sh            # create or reuse <repo>/.venv-sglang
#   REVATI_SGLANG_VENV=/path scripts/setup_sglang_env.sh   # keep the venv elsewhere
#   scripts/setup_sglang_env.sh --force    # rebuild even if the marker says it is complete
#   scripts/setup_sglang_env.sh --check    # only say whether it is complete (exit 0) or not (1)
#
# Result: sglang==0.5.23 on PyPI's CUDA 13 build of torch==2.14.1 (it imports with no GPU and no
# driver: torch.cuda.is_available() is False), torchvision==0.29.1, and this repository
# installed editable with its test tools. About 11 GB; ~5 minutes when the wheels are local.
#
# Packages that cannot load here: sglang-kernel (sgl_kernel), sgl-flash-mla (flash_mla) and
# sgl-deep-ep (deep_ep) link libcuda.so.1, the driver, which a machine without a GPU does not
# have. They stay installed (SGLang's own requirements, and ABI-consistent with torch 2.14.1:
# the check below proves that every library and symbol they need resolves except the driver's).
# Revati replaces what they do at SGLang's seams (docs/sglang-hookmap.md). torchvision 0.29.1,
# torchaudio 2.11.0 and torchcodec 0.17.0 do load beside this torch and are kept.
#
# Idempotent: a marker file in the venv records the pinned versions, the checkout and a hash of
# its packaging files. When it matches and the installed versions agree, nothing is installed.
# Non-interactive (no prompts, stdin closed); fit for CI.
set -euo pipefail

SGLANG_VERSION="0.5.23"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
# Extension libraries that need the driver (libcuda.so.1) and nothing else that is missing.
NEEDS_DRIVER=(sgl_kernel flash_mla deep_ep)
MARKER_SCHEMA="1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REVATI_SGLANG_VENV:-$ROOT/.venv-sglang}"
MARKER="$VENV/.revati-sglang-env"
LOG="$VENV/setup.log"

NAME=setup_sglang_env
HELP_LINES="2,22p"
# shellcheck source=scripts/venv_lib.sh
. "$ROOT/scripts/venv_lib.sh"
export SGLANG_DISABLE_USAGE_STATS=1

# The pinned versions: the first part of the marker.
base_marker() {
    printf 'schema=%s\nsglang=%s\ntorch=%s\ntorchvision=%s\n' \
        "$MARKER_SCHEMA" "$SGLANG_VERSION" "$TORCH_VERSION" "$TORCHVISION_VERSION"
}

# Cheap check of the installed versions (reads metadata only: no import of sglang or torch).
base_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$SGLANG_VERSION" "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'PY'
import sys, importlib.metadata as md
sglang_v, torch_v, tv_v = sys.argv[1:]
def ver(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return None
# PyPI's torch 2.14.1 is the CUDA 13 build and reports plain "2.14.1" in its metadata.
ok = ver("sglang") == sglang_v and ver("torch") == torch_v and ver("torchvision") == tv_v
ok = ok and ver("pytest") is not None
sys.exit(0 if ok else 1)
PY
}

# --- 0. reuse -----------------------------------------------------------------------------------
venv_reuse "sglang $SGLANG_VERSION, torch $TORCH_VERSION"

# --- 1. the venv and pip -------------------------------------------------------------------------
venv_create

# --- 2. pip's site configuration ----------------------------------------------------------------
# This machine's pip configuration (/etc/xdg/pip) names a constraints file that caps torch and
# torchvision (torch<=2.14.1, torchvision<=0.29.1 when written); its extra indexes hold the
# CUDA build of torch 2.14.1 and the nvidia-* wheels on local disk. If a constraint excludes a
# pin, everything comes from PyPI (several GB of CUDA wheels). The pins: sglang 0.5.23's exact
# ones on the torch family (its METADATA).
site_constraints "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" torchaudio==2.11.0 \
    torchcodec==0.17.0 "sglang==$SGLANG_VERSION" sglang-kernel==0.4.10 \
    flashinfer-python==0.7.2 transformers==5.19.0

# --- 3. SGLang, torch and this repo, in one resolve ----------------------------------------------
say "step 4/6: installing sglang==$SGLANG_VERSION, torch==$TORCH_VERSION (CUDA build) and revati (-e $ROOT[test]); full log: $LOG"
t_install=$(date +%s)
pip_ install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "sglang==$SGLANG_VERSION" \
    -e "$ROOT[test]" || die "pip install failed (see $LOG)"
say "pip install took $(( $(date +%s) - t_install ))s"

# --- 4. what loads, and what needs the driver ----------------------------------------------------
# With no driver, an extension that links libcuda.so.1 cannot be dlopen'ed at all, so importing
# it says nothing about whether it matches torch. `ldd -r` (with torch's and the nvidia wheels'
# library folders on the path) does: every library and symbol must resolve except the driver's.
say "step 5/6: checking that the CUDA extensions match torch $TORCH_VERSION (only the driver missing)"
"$VPY" - "${NEEDS_DRIVER[@]}" <<'PY' 2>&1 | tee -a "$LOG" || die "an extension does not match this torch (see above)"
import importlib.util, pathlib, re, subprocess, sys, os
site = pathlib.Path(importlib.util.find_spec("torch").origin).parents[1]
libdirs = [site / "torch" / "lib", *sorted(site.glob("nvidia/*/lib")), *sorted(site.glob("nvidia/*/*/lib"))]
env = {**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, libdirs))}
DRIVER_LIBS = {"libcuda.so.1", "libnvidia-ml.so.1"}
bad = 0
for pkg in sys.argv[1:]:
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        print(f"    {pkg}: not installed"); bad += 1; continue
    sos = sorted(pathlib.Path(spec.origin).parent.rglob("*.so"))
    missing_libs, missing_syms = set(), set()
    for so in sos:
        out = subprocess.run(["ldd", "-r", str(so)], capture_output=True, text=True, env=env)
        text = out.stdout + out.stderr
        missing_libs |= set(re.findall(r"^\s*(\S+) => not found", text, re.M))
        for sym in re.findall(r"undefined symbol: (\S+)", text):
            # Python's C API resolves against the interpreter; cu* are the driver's.
            if not sym.startswith(("Py", "_Py", "cu")):
                missing_syms.add(sym)
    other = missing_libs - DRIVER_LIBS
    if other or missing_syms:
        bad += 1
        print(f"    {pkg}: MISMATCH: libraries {sorted(other)}, symbols {sorted(missing_syms)[:5]}")
    else:
        print(f"    {pkg}: {len(sos)} extension(s); only the driver is missing ({', '.join(sorted(missing_libs)) or 'nothing'})")
sys.exit(1 if bad else 0)
PY

# --- 5. verify ----------------------------------------------------------------------------------
say "step 6/6: verifying"
"$VPY" - <<'PY' || die "import check failed"
import importlib.metadata as md
import torch
import sglang, sglang.srt.server_args  # noqa: F401
import torchvision, torchaudio  # noqa: F401
torch.ops.torchvision.nms  # torchvision's compiled ops match this torch
import revati.adapters  # noqa: F401
assert torch.version.cuda, "expected the CUDA build of torch"
assert not torch.cuda.is_available(), "a GPU is visible: this environment is for machines without one"
print(f"    sglang {sglang.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"is_available={torch.cuda.is_available()}), torchvision {md.version('torchvision')}, "
      f"transformers {md.version('transformers')}, flashinfer {md.version('flashinfer-python')}, "
      f"sglang-kernel {md.version('sglang-kernel')}, triton {md.version('triton')}")
PY
revati_ok || die "revati is not installed editable from $ROOT"
"$VPY" -m sglang.launch_server --help >/dev/null 2>>"$LOG" \
    || die "'python -m sglang.launch_server --help' failed (see $LOG)"
say "  'python -m sglang.launch_server --help' ok"
"$VPY" -m sglang.bench_serving --help >/dev/null 2>>"$LOG" \
    || die "'python -m sglang.bench_serving --help' failed (see $LOG)"
say "  'python -m sglang.bench_serving --help' ok"

expected_marker >"$MARKER"
say "done: $VENV is complete ($(du -sh "$VENV" | cut -f1)); activate with: source $VENV/bin/activate"
