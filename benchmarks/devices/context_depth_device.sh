#!/bin/bash
# Issue 23's depth ratios of the native dense backend on the lent 16-core AMX Xeon (device tool):
# R1-Distill-Qwen-1.5B widths (random weights, int8, --layers LAYERS of its 28), batch 1, 16
# threads: decode after 128 vs 4,096 vs 16,384 vs 32,768 cached tokens, prefill of 512 vs 4,096
# vs 16,384 tokens,
# as ratios taken in one process (benchmarks/design/context_depth.py). What travels: the
# published config and tokenizer, in an ignored folder (about 10 MB):
#   here:  mkdir -p .carry && cp -r ../shared/reference .carry/
#   there: bash benchmarks/devices/context_depth_device.sh            (carry .carry)
# The random checkpoint and its export are made there (torch and the exporter, as moe_device.sh
# does; about 2 GB of disk for the whole depth), then the rounds run; everything goes to $OUT:
# machine.txt, export.log, context-depth.txt (the lines and the JSON summary).
# A short try (here, say):
#   LAYERS=1 THREADS=2 DEPTHS=128,256 PREFILLS=256,512 REF=../shared/reference;
# ROUNDS (3), STEPS (32) and KV_CACHE (float32, or float16) as context_depth.py takes them;
# MEASURE_S (no limit) stops the rounds after that many seconds, keeping the lines printed so far
# (shortest lengths come first);
# BUDGET_S instead: what is left of that many seconds after the checkpoint and export.
set -o pipefail
LAYERS=${LAYERS:-28} THREADS=${THREADS:-16} ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-32}
DEPTHS=${DEPTHS:-128,4096,16384,32768} PREFILLS=${PREFILLS:-512,4096,16384}
MEASURE_S=${MEASURE_S:-0}
KV_CACHE=${KV_CACHE:-float32}
REF=$(realpath "${REF:-.carry/reference}")
OUT=${OUT:-/tmp/depth-out} WORK=${WORK:-/tmp/edgeds-depth}
mkdir -p "$OUT"
source benchmarks/devices/checkout_env.sh
# OpenMP waiting as the native backend sets it (GOMP_SPINCOUNT) unless the caller sets its own
{ lscpu | grep -E '^(Model name|Thread|Core|Socket)'
  grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
  echo; free -g | head -2; gcc --version | head -1; git log -1 --format='%H %s' 2>/dev/null; } \
  > "$OUT/machine.txt"
start=$SECONDS
python3 -m benchmarks.design.context_depth --reference "$REF" --work "$WORK" --layers "$LAYERS" \
    --threads "$THREADS" --decode-depths "$DEPTHS" --prefill "$PREFILLS" --steps "$STEPS" \
    --rounds "$ROUNDS" --kv-cache "$KV_CACHE" --prepare-only 2>&1 | tail -20 > "$OUT/export.log" \
    || { cat "$OUT/export.log"; exit 1; }
echo "prepared in $((SECONDS - start)) s" | tee -a "$OUT/export.log"
[ -n "$BUDGET_S" ] && MEASURE_S=$((BUDGET_S - SECONDS > 1 ? BUDGET_S - SECONDS : 1))
timeout "$MEASURE_S" python3 -m benchmarks.design.context_depth --reference "$REF" --work "$WORK" \
    --layers "$LAYERS" --threads "$THREADS" --decode-depths "$DEPTHS" --prefill "$PREFILLS" \
    --steps "$STEPS" --rounds "$ROUNDS" --kv-cache "$KV_CACHE" 2>&1 | tee "$OUT/context-depth.txt"
