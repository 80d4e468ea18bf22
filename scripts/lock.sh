#!/usr/bin/env bash
# Regenerate a lock (constraints/core.txt or constraints/vlmeval.txt) from a fresh resolution: a scratch
# virtualenv installed as the README says but WITHOUT the constraints file (so pip picks the newest versions
# pyproject.toml allows, minus the holds below), then `pip freeze`. Outside CI; needs the package index.
#
#   scripts/lock.sh                 # constraints/core.txt      (extras test,lmeval,ray)
#   scripts/lock.sh vlmeval         # constraints/vlmeval.txt   (extras vlmeval,lmms,test; the external backends' virtualenv)
#   scripts/lock.sh core "numpy<3"  # extra requirements are passed to pip and named in the header
#
# torch is installed first (the CPU wheel) and left out of the core lock; prism-lab itself is left out.
# Review the diff (`git diff constraints/`), run the suite on the new lock, then commit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-core}
[ $# -gt 0 ] && shift
PY=${PYTHON:-python3.11}
TORCH=torch==2.13.0

# Held back, with the reason (each is a pip requirement, also written into the lock's header):
# transformers 5.25 pulls in `kernels` and turns hub kernels on by default (a run-time download; it broke
# device_map="meta" loading). prism-lab now sets USE_HUB_KERNELS=0, but the lock stays on what CI tested.
HOLDS=("transformers==5.24.0")

case "$TARGET" in
  core)
    EXTRAS="test,lmeval,ray"; OUT=constraints/core.txt; KEEP='^(pip|torch|prism-lab|prism_lab)=='
    HEADER="# The core environment, locked: every direct and transitive version of .[$EXTRAS] that CI tested (torch excepted:
# the README installs the CPU wheel $TORCH first). Used by the README's set-up command and by .ci/run.
# Regenerate with scripts/lock.sh; scripts/newest.sh installs the newest allowed versions instead and reports what breaks." ;;
  vlmeval)
    # torchvision must match torch (0.28.0 is the release built against 2.13.0); both stay pinned here.
    EXTRAS="vlmeval,lmms,test"; OUT=constraints/vlmeval.txt; KEEP='^(pip|prism-lab|prism_lab)=='
    HOLDS+=("torchvision==0.28.0")
    HEADER="# The external evaluation backends' virtualenv (VLMEvalKit and lmms-eval side by side), locked: every version of .[$EXTRAS] that CI tested, torch and torchvision
# included (torchvision must be the release built against torch 2.13.0). Used by the README's vlmeval install and .ci/run.
# Regenerate with scripts/lock.sh vlmeval." ;;
  *) echo "scripts/lock.sh: unknown target '$TARGET' (expected core or vlmeval)" >&2; exit 2 ;;
esac
HOLDS+=("$@")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "== resolving .[$EXTRAS] in a scratch virtualenv ($WORK), holds: ${HOLDS[*]}" >&2
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin/python"
"$V" -m pip install -q --upgrade pip
"$V" -m pip install -q "$TORCH"
"$V" -m pip install -q -e ".[$EXTRAS]" "${HOLDS[@]}"
# decord's wheel says `Tag: cp36-cp36m-manylinux2010_x86_64` in its WHEEL file although it installs and works on
# 3.11, so pip check calls it unsupported; any other complaint stops the lock.
if ! check=$("$V" -m pip check 2>&1); then
  other=$(echo "$check" | grep -v -E '^decord [^ ]+ is not supported on this platform$' || true)
  [ -z "$other" ] || { echo "$check" >&2; exit 1; }
fi
{
  echo "$HEADER"
  echo "# Held back: ${HOLDS[*]} (reasons in scripts/lock.sh)."
  # --all: setuptools is a requirement too (pytablewriter, torch); pip itself is the installer, not locked.
  "$V" -m pip freeze --all --exclude-editable | grep -v -i -E "$KEEP" \
    | sed -E 's/^(torch==[^+]*)\+.*/\1/'
} > "$OUT.new"
mv "$OUT.new" "$OUT"
echo "== wrote $OUT ($(grep -vc '^#' "$OUT") pins); review with: git diff $OUT" >&2
