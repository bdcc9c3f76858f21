#!/usr/bin/env bash
# Quality of activation-sparsity methods at equal MEASURED skipped bytes (issue 5; RESULTS.md).
#
#   tools/quality.sh [-m MODEL] [-l LEVELS] [-k CHUNKS1024] [-K CHUNKS2048] [-n LIMIT] [-z ZLEVELS]
#                    [-M METHODS] [-o OUT] [-t THREADS] [-j JOBS]
#
#   -m MODEL    llama GGUF (default: $LAROSA_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   -l LEVELS   target fractions of block weight bytes skipped (default "0.25 0.40 0.50")
#   -k N        WikiText-2 test windows of 1024 tokens (default 4; 0 = skip)
#   -K N        windows of 2048 tokens (the paper's protocol) (default 2; 0 = skip)
#   -L LEVELS   levels run with 2048-token windows (default "0.40")
#   -n N        zero-shot: first N documents of each of the 7 tasks (default 100; 0 = skip, all = full sets)
#   -z LEVELS   levels run zero-shot (default "0.40 0.50"; dense is always run)
#   -M METHODS  subset of: larosa default wina topk teal teal812 cats tealpca tealwina812
#               (default: the first seven)
#   -o OUT      output folder: converted models, logs/*.log, logs/*.json, results.md (default /tmp/larosa-quality)
#   -t N        threads per run (default 1)   -j N   runs in parallel (default 2)
#
# Methods (all F16 block weights, calibration: first 8192 tokens of the WikiText-2 train text):
#   larosa   the paper's recipe: PCA rotation per layer, Top-K, coefficients 0.8/1.2
#   default  the converter's default, --method budget: identity basis, thresholds on |x| * weight row
#            norm held to a per-token byte plan, 0.8/1.2 (DEFAULT_OPTS overrides the options)
#   wina     fixed Top-K of the same keys (the default before 2026-11-29)
#   topk     plain Top-K of |input| (ranked by |g u| at the normed inputs), coefficients 1/1
#   teal     TEAL: static per-layer magnitude thresholds, coefficients 1/1
#   teal812  TEAL with the paper's 0.8/1.2 split (the best configuration in RESULTS.md)
#   cats     CATS: threshold on |silu(gate)|, MLP down-projection inputs only
#   tealpca      rotated thresholds: TEAL's static thresholds on the PCA-rotated inputs (paper ablation)
#   tealwina812  thresholds on |x| * weight row norm with the 0.8/1.2 split (the best quality measured)
#
# Equal bytes: every method is run at the sparsity s whose MEASURED skipped fraction of block weight
# bytes (larosa-perplexity's skipped_fraction) matches each target level. For Top-K files the fraction
# is exact and computed from the file (Model.skipped_fraction's formula); for threshold files (default,
# teal, cats) it depends on the data: s is set by two secant steps on the first two 1024-token windows
# (s' = s * level / measured), and the table shows the fraction measured in the scored run itself.
# CATS skips only the down projection (a quarter of the block bytes on SmolLM2): levels it cannot reach
# within 1 point at s = 0.99 are reported as unreachable and run at s = 0.99 once.
# Perplexity texts: the first 149,288 bytes of wiki.test.raw (cut at a line end; enough for 4 x 2048
# tokens; tokenizing the whole file costs minutes on a busy machine and gives the same windows).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/.venv/bin
DATA=${LAROSA_DATA:-$ROOT/../shared/data}
CACHE=${LAROSA_CACHE:-$HOME/.cache/larosa}
MODEL=$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
LEVELS="0.25 0.40 0.50"; CH1=4; CH2=2; L2="0.40"; LIMIT=100; ZLEVELS="0.40 0.50"
METHODS="larosa default wina topk teal teal812 cats"; OUT=/tmp/larosa-quality; THREADS=1; JOBS=2
DEFAULT_OPTS=${DEFAULT_OPTS:---method budget}
while getopts m:l:k:K:L:n:z:M:o:t:j: o; do
    case $o in
        m) MODEL=$OPTARG;; l) LEVELS=$OPTARG;; k) CH1=$OPTARG;; K) CH2=$OPTARG;; L) L2=$OPTARG;;
        n) LIMIT=$OPTARG;; z) ZLEVELS=$OPTARG;; M) METHODS=$OPTARG;; o) OUT=$OPTARG;;
        t) THREADS=$OPTARG;; j) JOBS=$OPTARG;; *) sed -n 2,20p "$0"; exit 2;;
    esac
done
CALIB=$DATA/calibration/wikitext2_raw_train_first1MB.txt
TEXT=$OUT/wiki.test.head150k.raw
TASKS=piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa
mkdir -p "$OUT/logs"
head -c 150000 "$DATA/wikitext-2-raw/wiki.test.raw" | head -n -1 > "$TEXT"
export BIN OUT THREADS TEXT MODEL TASKS LIMIT

# run NAME CMD...: log the command and its output to logs/NAME.log, its JSON line to logs/NAME.json
run() {
    local name=$1; shift
    [ -s "$OUT/logs/$name.json" ] && return 0          # done before: keep (delete the .json to redo)
    { echo "# $(date -u +%FT%TZ) $*"; } > "$OUT/logs/$name.log"
    local t0=$(date +%s)
    nice -n 5 "$@" >> "$OUT/logs/$name.log" 2>&1 || echo "# FAILED" >> "$OUT/logs/$name.log"
    echo "# seconds=$(( $(date +%s) - t0 ))" >> "$OUT/logs/$name.log"
    grep '^{' "$OUT/logs/$name.log" | tail -1 > "$OUT/logs/$name.json" || true
    echo "$name: $(head -c 300 "$OUT/logs/$name.json")"
}
export -f run

# 1. conversions
opts_of() {
    case $1 in
        larosa) echo "--method larosa";;
        default) echo "$DEFAULT_OPTS";;
        wina) echo "--method wina";;
        topk) echo "--method topk";;
        teal) echo "--method teal";;
        cats) echo "--method cats";;
        teal812) echo "--method teal --coefs 0.8,1.2,0.8,1.2";;
        tealpca) echo "--method teal --rotation pca";;
        tealwina812) echo "--method teal --score wina --coefs 0.8,1.2,0.8,1.2";;
        *) echo "quality.sh: unknown method $1" >&2; exit 2;;
    esac
}
for m in $METHODS; do
    [ -f "$OUT/$m.gguf" ] || run "convert_$m" "$BIN/larosa-convert" "$MODEL" -o "$OUT/$m.gguf" --type f16 \
        --calib "$CALIB" -t "$THREADS" -q $(opts_of $m)
done

# 2. the sparsity of each method at each level (equal measured skipped bytes)
topk_s() {   # exact s for a Top-K file: skipped fraction of block weight bytes closest to the target
    "$BIN/python" - "$1" "$2" <<'EOF'
import sys
from larosa.runtime import loader, format as F
lf, target = loader.load(sys.argv[1]), float(sys.argv[2])
def frac(s):
    ks, read, dense = lf.ks(s), 0.0, 0.0
    for name, (shape, qt) in lf.shapes_types().items():
        p = name.split(".")
        if name.startswith("blk.") and p[2] in F.WEIGHT_INPUT:
            rb = F.row_bytes(qt, shape[1])
            dense += shape[0] * rb
            read += ks[F.WEIGHT_INPUT[p[2]]][int(p[1])] * rb
    return 1 - read / dense
print(min((abs(frac(i / 10000) - target), i / 10000) for i in range(9990))[1])
EOF
}
threshold_s() {   # s for a threshold file: two secant steps on two 1024-token windows
    local m=$1 t=$2 s=$2 i
    for i in 1 2; do
        run "probe${i}_${m}_$t" "$BIN/larosa-perplexity" -m "$OUT/$m.gguf" -f "$TEXT" -c 1024 --chunks 2 \
            -t "$THREADS" --sparsity "$s" --json -q > /dev/null
        s=$("$BIN/python" -c "import json,sys; f=json.load(open(sys.argv[1]))['skipped_fraction']; print(round(min(float(sys.argv[2])*float(sys.argv[3])/f, 0.99), 4))" \
            "$OUT/logs/probe${i}_${m}_$t.json" "$s" "$t")
    done
    echo "$s"
}
: > "$OUT/levels.txt"
for m in $METHODS; do
    prev=
    for t in $LEVELS; do
        case $m in default|teal*|cats) s=$(threshold_s $m $t);; *) s=$(topk_s "$OUT/$m.gguf" $t);; esac
        if [ "$s" = "$prev" ]; then echo "$m cannot reach $t (s capped at $s)"; continue; fi
        echo "$m $t $s" >> "$OUT/levels.txt"; prev=$s
    done
done
cat "$OUT/levels.txt"

# 3. perplexity (1024 and 2048-token windows) and zero-shot, JOBS at a time
job_ppl() {   # METHOD LEVEL S CTX CHUNKS
    if [ "$1" = dense ]; then
        run "ppl$4x$5_dense" "$BIN/larosa-perplexity" -m "$MODEL" --engine llama.cpp -f "$TEXT" -c "$4" \
            --chunks "$5" -t "$THREADS" --json -q
    else
        run "ppl$4x$5_$1_$2" "$BIN/larosa-perplexity" -m "$OUT/$1.gguf" -f "$TEXT" -c "$4" --chunks "$5" \
            -t "$THREADS" --sparsity "$3" --json -q
    fi
}
job_eval() {  # METHOD LEVEL S (dense: the default file at sparsity 0, identical to the original model)
    local lim=(); [ "$LIMIT" = all ] || lim=(--limit "$LIMIT")
    run "eval${LIMIT}_$1_$2" "$BIN/larosa-eval" -m "$OUT/$4.gguf" --tasks "$TASKS" "${lim[@]}" \
        --sparsity "$3" -t "$THREADS" --json
}
export -f job_ppl job_eval
{
    if [ "$CH1" -gt 0 ]; then echo "job_ppl dense 0 0 1024 $CH1"; fi
    if [ "$CH2" -gt 0 ]; then echo "job_ppl dense 0 0 2048 $CH2"; fi
    while read -r m t s; do
        if [ "$CH1" -gt 0 ]; then echo "job_ppl $m $t $s 1024 $CH1"; fi
        if [ "$CH2" -gt 0 ] && [[ " $L2 " == *" $t "* ]]; then echo "job_ppl $m $t $s 2048 $CH2"; fi
    done < "$OUT/levels.txt"
    if [ "$LIMIT" != 0 ]; then
        d=$(echo $METHODS | awk '{print $1}')
        case " $METHODS " in *" default "*) d=default;; esac
        echo "job_eval dense 0 0 $d"
        while read -r m t s; do
            if [[ " $ZLEVELS " == *" $t "* ]]; then echo "job_eval $m $t $s $m"; fi
        done < "$OUT/levels.txt"
    fi
} > "$OUT/jobs.txt"
xargs -P "$JOBS" -I{} bash -c '{}' < "$OUT/jobs.txt"

# 4. tables
"$BIN/python" - "$OUT" "$LIMIT" <<'EOF' | tee "$OUT/results.md"
import glob, json, os, sys
out, limit = sys.argv[1], sys.argv[2]
def load(name):
    try:
        return json.load(open(os.path.join(out, "logs", name + ".json")))
    except (OSError, ValueError):
        return None
rows = [l.split() for l in open(os.path.join(out, "levels.txt"))]
for ctx in (1024, 2048):
    files = glob.glob(os.path.join(out, "logs", f"ppl{ctx}x*_dense.json"))
    if not files:
        continue
    ch = os.path.basename(files[0]).split("_")[0].split("x")[1]
    d = load(f"ppl{ctx}x{ch}_dense")
    print(f"\nPerplexity, WikiText-2 test, {ch} windows x {ctx} ({d['tokens']} scored tokens); dense {d['ppl']:.3f}\n")
    print("| method | target | s | skipped (measured) | ppl | vs dense |\n|---|---|---|---|---|---|")
    for m, t, s in rows:
        r = load(f"ppl{ctx}x{ch}_{m}_{t}")
        if r:
            print(f"| {m} | {float(t):.0%} | {s} | {r['skipped_fraction']:.1%} | {r['ppl']:.3f} | {r['ppl']/d['ppl']-1:+.1%} |")
tasks = "piqa arc_easy arc_challenge hellaswag winogrande boolq openbookqa".split()
if limit == "0":
    sys.exit(0)
print(f"\nZero-shot accuracy (acc_norm where lm-eval reports it, else acc), limit {limit} per task\n")
print("| method | target | s | " + " | ".join(tasks) + " | avg |\n|---|---|---|" + "---|" * (len(tasks) + 1))
for m, t, s in [("dense", "0", "0")] + rows:
    r = load(f"eval{limit}_{m}_{t}")
    if not r:
        continue
    if not all(k in r for k in tasks):
        continue
    acc = [r[k].get("acc_norm", r[k]["acc"]) for k in tasks]
    print(f"| {m} | {float(t):.0%} | {s} | " + " | ".join(f"{a:.3f}" for a in acc) + f" | {sum(acc)/len(acc):.4f} |")
EOF
