#!/bin/bash
# The side-by-side harness on the lent 16-core AMX Xeon (device tool), in steps that each fit
# one call (10 minutes).
#
# OpenVINO rows: the OpenVINO wheels (84 MB) exceed one call's transfer limit with this
# repository, so they travel as a split tar over earlier calls, each copying its part to
# /tmp/parts:
#   here:   tar -czf - -C .whl . -C ../.carry reference | split -b 22M - .parts/p.
#           (then one call per part: mkdir -p /tmp/parts && cp .parts/p.XX /tmp/parts/,
#           carrying .parts/p.XX)
#   there:  bash benchmarks/devices/amx_device.sh STEP, a STEP each call, one of
#             prepare | edgeds-onnxruntime | edgeds | openvino-genai | report
# ONNX Runtime only (no wheels; carry .carry, which holds shared/reference):
#   there:  bash benchmarks/devices/amx_device.sh edgeds
#           bash benchmarks/devices/amx_device.sh edgeds --weights int8-wo
#   then:   REUSE=edgeds,edgeds-int8-wo,... bash benchmarks/devices/amx_device.sh report
#           (results of earlier calls or machines: put their JSON files in .carry/results)
# A newer ONNX Runtime than the device image's (session 4 ran 1.32, what pip installs today):
#   here:   pip download onnxruntime==1.32.0 --no-deps --python-version 3.12 --only-binary=:all: \
#             --platform manylinux_2_28_x86_64 -d /tmp/whl
#           split -b 14M /tmp/whl/*.whl .parts2/w.
#   there:  call 1 (carry .parts2/w.aa): mkdir -p /tmp/parts2 && cp .parts2/w.aa /tmp/parts2/
#           call 2 (carry .parts2/w.ab and .carry): bash benchmarks/devices/amx_device.sh ort-wheel;
#           then the runs above in the same call (the machine keeps /tmp for 30 s between calls
#           only)
# Peak RSS is the runner's own (VmHWM): a checkpoint written by compare.py no longer inflates it.
# Runtimes taking turns, medians and ranges (a 10-minute call holds two or three rounds of the
# pair):
#   there:  bash benchmarks/devices/amx_device.sh edgeds,openvino-genai --batches 64 --rounds 2
# edgeds exports with several KV caches, each a row, all in the same turns:
#   there:  bash benchmarks/devices/amx_device.sh edgeds,openvino-genai --batches 64 --rounds 3 \
#             --kv-cache float32,float16
# AMX refused, to see what it is worth:
#   gcc -O2 -o /tmp/without_amx benchmarks/kernels/without_amx.c,
#   then prefix a python3 command with /tmp/without_amx (xeon-amx-16t.md, session 5).
set -eo pipefail
CONFIGS=/tmp/bundle/reference/configs
[ -d .carry/reference/configs ] && CONFIGS=$PWD/.carry/reference/configs
source benchmarks/devices/checkout_env.sh /tmp/site
export EDGEDS_CONFIGS=$CONFIGS
ARGS="--shape deepseek-r1-distill-qwen-1.5b --threads 16 --jobs 64 --batches 8,32"
ARGS="$ARGS --machine xeon-amx-16t --work /tmp/cmp"
case "$1" in
  prepare)
    mkdir -p /tmp/bundle && cat /tmp/parts/p.* | tar -xzf - -C /tmp/bundle
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site /tmp/bundle/*.whl
    python3 -m edgeds.cli doctor | tee "$OUT/xeon-amx-16t-doctor.txt"
    python3 -m benchmarks.peers.compare $ARGS --peers edgeds,openvino-genai --prepare-only ;;
  ort-wheel)
    cat /tmp/parts2/w.aa .parts2/w.ab \
      > /tmp/onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      /tmp/onnxruntime-*.whl
    python3 -c "import onnxruntime; print('onnxruntime', onnxruntime.__version__)"
    exit 0 ;;
  report)
    cp .carry/results/*.json /tmp/cmp/ 2>/dev/null || true
    python3 -m benchmarks.peers.compare $ARGS --peers none \
      --reuse "${REUSE:-edgeds-onnxruntime,edgeds,openvino-genai}" --reuse-label '' ;;
  *)
    python3 -m edgeds.cli doctor > "$OUT/xeon-amx-16t-doctor.txt"
    python3 -m benchmarks.peers.compare $ARGS --peers "$1" --no-report "${@:2}" ;;
esac
cp /tmp/cmp/*.json "$OUT/" 2>/dev/null || true
cp benchmarks/results/xeon-amx-16t.* "$OUT/" 2>/dev/null || true
