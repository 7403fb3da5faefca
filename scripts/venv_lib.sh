# Shared by the framework environment scripts (setup_vllm_env.sh, setup_sglang_env.sh), sourced
# after they set:
#   NAME     the script's name, for its messages          VENV, MARKER, LOG   paths
#   ROOT     this checkout                                 HELP_LINES          sed range of --help
# and define base_marker (the pinned versions, one per line) and base_ok (are they installed?).
# It parses --force / --check, sets the non-interactive environment, and gives: say, die,
# expected_marker, revati_ok, pip_, and the steps venv_reuse, venv_create and
# site_constraints.

FORCE=0
CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) sed -n "$HELP_LINES" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "$NAME: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

T0=$(date +%s)
say() { printf '[%s %4ss] %s\n' "$NAME" "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }

export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
exec </dev/null

pick_python() {
    local c
    for c in "${REVATI_PYTHON:-}" /root/.pyenv/versions/3.11.7/bin/python python3.11 python3; do
        [ -n "$c" ] || continue
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

# Hash of what decides how this repo installs; a change re-runs its editable install.
repo_hash() { cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$0" | sha256sum | cut -c1-16; }

# The marker has two parts: the framework base (minutes to install) and this checkout's
# editable install (seconds). A venv kept outside the checkout and reused by another clone
# only needs the second part redone.
expected_marker() {
    base_marker
    printf 'repo=%s\nrepo_packaging=%s\n' "$ROOT" "$(repo_hash)"
}

# Is revati installed, editable, from this checkout?
revati_ok() {
    "$VENV/bin/python" - "$ROOT" <<'PY'
import sys, importlib.util, pathlib
root = pathlib.Path(sys.argv[1]).resolve()
spec = importlib.util.find_spec("revati.adapters")
ok = spec is not None and spec.origin is not None and pathlib.Path(spec.origin).resolve().is_relative_to(root)
sys.exit(0 if ok else 1)
PY
}

# pip's full output goes to the log; the console gets one line per package and the errors.
pip_() {
    local rc
    set +o pipefail
    "$VPY" -m pip "$@" 2>&1 | tee -a "$LOG" |
        grep -P --line-buffered '^(Collecting|Successfully|ERROR|WARNING: (?!Location ))' | sed -u 's/^/    /'
    rc=${PIPESTATUS[0]}
    set -o pipefail
    return "$rc"
}

# Step 0: exit when the venv is complete (or, with --check, say whether it is); when only this
# checkout's editable install is missing or stale, redo just that and exit. $1: what the base
# is, for the messages ("vllm 0.32.0, torch 2.13.0+cpu").
venv_reuse() {
    local base="$1"
    if [ "$FORCE" = 0 ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$(expected_marker)" ] &&
       base_ok && revati_ok; then
        say "reusing $VENV ($base, revati from $ROOT; marker matches)"
        exit 0
    fi
    if [ "$CHECK_ONLY" = 1 ]; then
        say "$VENV is missing or incomplete"
        exit 1
    fi
    VPY="$VENV/bin/python"
    local base_lines
    base_lines=$(base_marker | wc -l)
    if [ "$FORCE" = 0 ] && [ -f "$MARKER" ] &&
       [ "$(head -n "$base_lines" "$MARKER")" = "$(base_marker)" ] && base_ok; then
        say "base ($base) in $VENV is complete; (re)installing revati editable from $ROOT"
        rm -f "$MARKER"
        : >>"$LOG"
        # The venv already has setuptools (a torch dependency): no isolated build env needed.
        pip_ install --no-build-isolation -e "$ROOT[test]" ||
            die "editable install of $ROOT failed (see $LOG)"
        revati_ok || die "revati is not importable from $ROOT after the install"
        expected_marker >"$MARKER"
        say "done: $VENV is complete"
        exit 0
    fi
}

# Steps 1 and 2: the venv (an existing, incomplete one is kept unless --force: pip installs
# what is missing), then a recent pip in it.
venv_create() {
    local py
    py="$(pick_python)" || die "no Python 3.11 found (set REVATI_PYTHON)"
    say "python: $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
    say "venv:   $VENV"
    rm -f "$MARKER"
    if [ "$FORCE" = 0 ] && [ -x "$VPY" ] &&
       "$VPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        say "step 1/6: reusing the existing, incomplete venv; pip installs what is missing"
    else
        say "step 1/6: creating the venv"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    : >"$LOG"
    say "step 2/6: upgrading pip in the venv"
    pip_ install --quiet --upgrade "pip>=25.1" || die "pip upgrade failed (see $LOG)"
}

# Step 3: do the constraints files named in pip's site configuration admit the pins (arguments
# "name==version")? If one is excluded, pip runs without the site configuration for this
# install (PIP_CONFIG_FILE=/dev/null, and no PIP_CONSTRAINT / PIP_FIND_LINKS /
# PIP_EXTRA_INDEX_URL from the environment). Sets SITE_CONFIG_IGNORED=1 then.
site_constraints() {
    say "step 3/6: checking pip's configured constraints"
    local conflicts
    conflicts="$("$VPY" - "$@" <<'PY'
import subprocess, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
need = {canonicalize_name(n): v for n, v in (a.split("==") for a in sys.argv[1:])}
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True).stdout
files = []
for line in out.splitlines():
    key, _, val = line.partition("=")
    if key.endswith((".constraint", ".constraints")):
        files += val.strip().strip("'\"").split()
bad = []
for f in files:
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for raw in lines:
        raw = raw.split("#")[0].strip()
        if not raw or raw.startswith("-"):
            continue
        try:
            req = Requirement(raw)
        except Exception:
            continue
        v = need.get(canonicalize_name(req.name))
        if v is None:
            continue
        if req.specifier.contains(v, prereleases=True):
            print(f"    {f}: '{raw}' admits {req.name}=={v}", file=sys.stderr)
        else:
            bad.append(f"{f}: '{raw}' excludes {req.name}=={v}")
print("\n".join(bad))
PY
)"
    SITE_CONFIG_IGNORED=0
    if [ -n "$conflicts" ]; then
        say "pip's site constraints exclude a pinned version:"
        printf '    %s\n' "$conflicts"
        say "running pip without the site configuration (PIP_CONFIG_FILE=/dev/null) for this install"
        export PIP_CONFIG_FILE=/dev/null
        unset PIP_CONSTRAINT PIP_FIND_LINKS PIP_EXTRA_INDEX_URL || true
        SITE_CONFIG_IGNORED=1
    else
        say "configured constraints (if any) admit the pins: $*"
    fi
}
