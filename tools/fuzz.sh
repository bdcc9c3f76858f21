#!/bin/sh
# Fuzzes the LaRoSA loader with atheris for a bounded time (one core) and prints the executions.
#
#   tools/fuzz.sh SECONDS [--model]
#
# --model also runs every accepted input through Model(...) and one eval (llama.cpp's tokenizer and
# the C library). Seeds (tiny valid LaRoSA files) are made once into $LAROSA_CACHE/fuzz/seeds; the
# growing corpus is kept in $LAROSA_CACHE/fuzz/corpus (default cache: ~/.cache/larosa). A finding
# (an exception other than LarosaError, a crash, a hang over 20 s, over 2 GiB of RSS) is saved as
# $LAROSA_CACHE/fuzz/findings/crash-* (or timeout-*, oom-*), and the script exits non-zero.
# Needs atheris in .venv (in the test extra on Linux x86_64; elsewhere: .venv/bin/pip install atheris)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
SECONDS_TO_RUN=${1:?usage: tools/fuzz.sh SECONDS [--model]}
MODE=${2:-}
CACHE=${LAROSA_CACHE:-$HOME/.cache/larosa}
SEEDS=$CACHE/fuzz/seeds
CORPUS=$CACHE/fuzz/corpus${MODE:+-model}
FINDINGS=$CACHE/fuzz/findings
mkdir -p "$SEEDS" "$CORPUS" "$FINDINGS"
"$PY" -c "import atheris" 2>/dev/null || { echo "fuzz.sh: atheris is not installed: $PY -m pip install atheris" >&2; exit 2; }
if [ -z "$(ls -A "$SEEDS")" ]; then
    "$PY" "$ROOT/tests/fuzz/fuzz_loader.py" --make-seeds "$SEEDS" >/dev/null
fi
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
set +e
# one worker, no forking: the machine's other core belongs to someone else
"$PY" "$ROOT/tests/fuzz/fuzz_loader.py" $MODE -max_total_time="$SECONDS_TO_RUN" -timeout=20 \
    -rss_limit_mb=2048 -max_len=131072 -print_final_stats=1 -artifact_prefix="$FINDINGS/" \
    "$CORPUS" "$SEEDS" >"$LOG" 2>&1
RC=$?
set -e
RUNS=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG" | tail -n 1)
[ -n "$RUNS" ] || RUNS=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$LOG" | tail -n 1)
echo "fuzz.sh: ${RUNS:-?} executions in ${SECONDS_TO_RUN} s (${MODE:-loader}), corpus $(ls "$CORPUS" | wc -l) files"
if [ "$RC" -ne 0 ]; then
    echo "fuzz.sh: finding (exit $RC); last lines of the log:" >&2
    tail -n 40 "$LOG" >&2
    ls -t "$FINDINGS" | head -n 3 | sed "s|^|fuzz.sh: saved $FINDINGS/|" >&2
    exit 1
fi
echo "fuzz.sh: no findings"
