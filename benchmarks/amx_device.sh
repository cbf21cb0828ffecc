#!/bin/bash
# The side-by-side harness on the lent 16-core AMX Xeon (device tool), in steps that each fit
# one call. The OpenVINO wheels (84 MB) exceed one call's transfer limit with this repository,
# so they travel as a split tar over earlier calls, each copying its part to /tmp/parts:
#
#   here:   tar -czf - -C .whl . -C ../.carry reference | split -b 21M - .parts/p.   (then one
#           call per part: mkdir -p /tmp/parts && cp .parts/* /tmp/parts/, carrying .parts)
#   there:  bash benchmarks/amx_device.sh prepare | edgeds-onnxruntime | edgeds | openvino-genai | report
set -eo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 EDGEDS_CONFIGS=/tmp/bundle/reference/configs
ARGS="--shape deepseek-r1-distill-qwen-1.5b --threads 16 --jobs 64 --batches 8,32 --machine xeon-amx-16t --work /tmp/cmp"
case "$1" in
  prepare)
    mkdir -p /tmp/bundle && cat /tmp/parts/p.* | tar -xzf - -C /tmp/bundle
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/bundle/*.whl
    python3 -m edgeds.cli doctor | tee "$OUT/xeon-amx-16t-doctor.txt"
    # exports only: an empty peer list still prepares every model
    python3 benchmarks/compare.py $ARGS --peers edgeds,openvino-genai --prepare-only ;;
  report)
    python3 benchmarks/compare.py $ARGS --peers none --reuse edgeds-onnxruntime,edgeds,openvino-genai --reuse-label '' ;;
  *)
    python3 benchmarks/compare.py $ARGS --peers "$1" --no-report ;;
esac
cp /tmp/cmp/*.json "$OUT/" 2>/dev/null || true
cp benchmarks/results/xeon-amx-16t.* "$OUT/" 2>/dev/null || true
