#!/usr/bin/env bash
# Outside CI: does prism-lab still work with the NEWEST versions pyproject.toml allows? Installs them in a
# scratch virtualenv (the README's set-up without constraints/core.txt), runs the default suite, and prints
# what broke (the failed test ids) and which versions differ from constraints/core.txt. Exit status: pytest's.
#
#   scripts/newest.sh                                   # the default suite (python -m pytest -q)
#   scripts/newest.sh tests/hostile/test_checkpoints.py -k meta   # any pytest arguments: a subset
#
# NEWEST_VENV=DIR puts the scratch virtualenv there (default: a new temp directory; it is kept, its path is
# printed); NEWEST_REUSE=1 reuses DIR when it already holds one instead of installing again.
# PRISM_LAB_UNLOCKED=1 skips tests/harness/test_lockfile.py's guard that the installed versions are the locked ones.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${NEWEST_VENV:-$(mktemp -d)/venv}
V="$VENV/bin/python"
if [ "${NEWEST_REUSE:-0}" != 1 ] || [ ! -x "$V" ]; then
  echo "== installing the newest allowed versions into $VENV" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || exit 1
  "$V" -m pip install -q --upgrade pip || exit 1
  "$V" -m pip install -q torch==2.13.0 || exit 1          # the CPU wheel first, as the README says
  "$V" -m pip install -q -e ".[test,lmeval,ray]" || exit 1
fi
"$V" -m pip check || echo "(pip check found conflicts, above)"
LOG=$(mktemp)
echo "== python -m pytest -q $*  (log: $LOG)" >&2
PRISM_LAB_UNLOCKED=1 PRISM_LAB_WANDB=disabled "$V" -m pytest -q -rfE "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
echo
echo "== newest-versions summary (scratch virtualenv: $VENV)"
broke=$(grep -E '^(FAILED|ERROR) ' "$LOG" | sed -E 's/ - .*//' | sort -u)
if [ -n "$broke" ]; then
  echo "what broke ($(echo "$broke" | wc -l) test(s)):"
  echo "$broke" | sed 's/^/  /'
else
  echo "what broke: nothing (pytest exit status $rc)"
fi
echo "versions that differ from constraints/core.txt:"
"$V" scripts/lock_diff.py constraints/core.txt
exit "$rc"
