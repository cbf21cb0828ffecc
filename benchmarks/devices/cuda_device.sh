#!/bin/bash
# The ONNX graphs on ONNX Runtime's CUDA provider, on the lent H200 (device tool): which
# provider runs each operator, CPU-vs-CUDA logits, and decode speed of the 1.5B shape with a
# float32 cache (attention on the CPU) against a float16 cache (attention on the GPU, the cache
# in device memory, and in host memory for comparison). Results: benchmarks/results/cuda-h200.md.
#
# onnxruntime-gpu (a CUDA 13 build; the image has CPU-only onnxruntime) travels split in 22 MB
# parts, one call each, while the machine stays warm (30 s between calls):
#   here:   pip download onnxruntime-gpu==1.31.1 --no-deps --python-version 3.12 \
#             --only-binary=:all: --platform manylinux_2_28_x86_64 -d /tmp/whl
#           split -b 21M /tmp/whl/*.whl .parts3/g.
#   there:  one call per part but the last (carry .parts3/g.XX):
#             mkdir -p /tmp/p3 && cp .parts3/g.XX /tmp/p3/
#           then (carry the last part and .carry, which holds the configs, the tokenizer and tiny
#           artifacts): bash benchmarks/devices/cuda_device.sh prepare;
#           then bash benchmarks/devices/cuda_device.sh measure
set -eo pipefail
source benchmarks/devices/checkout_env.sh /tmp/gsite
A=/tmp/cuda-art
case "$1" in
  prepare)
    cp .parts3/g.* /tmp/p3/ 2>/dev/null || true
    cat /tmp/p3/g.* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
    python3 -m pip install -q --no-deps --no-compile --target /tmp/gsite \
      /tmp/onnxruntime_gpu-*.whl 2>&1 | grep -vi warn || true
    python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    python3 -m benchmarks.random_checkpoint \
      .carry/reference/configs/deepseek-r1-distill-qwen-1.5b.json /tmp/r1-1.5b \
      .carry/reference/deepseek-v3-tokenizer
    for kv in float32 float16; do
      python3 -m edgeds.cli export /tmp/r1-1.5b -o $A/int8-wo-$kv --weights int8-wo --format onnx \
        --kv-cache $kv --context 2048 --overwrite 2>&1 | tail -1
    done ;;
  measure)
    G=CUDAExecutionProvider,CPUExecutionProvider
    for kv in float32 float16; do
      python3 -m benchmarks.devices.ep_placement $A/int8-wo-$kv --providers $G 2>&1 |
        grep -v "^W:" | tail -12
    done
    for kv in float32 float16; do
      python3 -m benchmarks.devices.provider_parity $A/int8-wo-$kv --providers $G --steps 16
    done
    python3 -m benchmarks.devices.provider_parity .carry/epvar/int8-wo-f16 --providers $G --steps 16
    python3 -m benchmarks.design.backend_steps $A/int8-wo-float32 --providers $G --batches 1,16,64
    python3 -m benchmarks.design.backend_steps $A/int8-wo-float16 --providers $G --batches 1,16,64
    python3 -m benchmarks.design.backend_steps $A/int8-wo-float16 --providers $G --batches 1,16,64 \
      --cache-on-host
    python3 -m benchmarks.design.backend_steps $A/int8-wo-float16 --providers $G --batches 1,16,64
    for d in CPUExecutionProvider CUDAExecutionProvider; do
      python3 -c "import onnxruntime as o; o.preload_dlls(); import sys
from edgeds.cli.main import app
sys.argv = ['edgeds', 'infer', '.carry/epvar/int8-wo-f16', '-i', 'examples/prompts.jsonl',
            '-o', '/tmp/f16-$d.jsonl', '--max-new-tokens', '24', '--device', '$d']; app()" \
        > /tmp/f16-$d.log 2>&1 || echo "rc=$?"
    done
    grep -h "provider\|tok/s" /tmp/f16-CUDAExecutionProvider.log | head -4
    python3 -c "
import json
a = {r['id']: r.get('text') for r in map(json.loads, open('/tmp/f16-CPUExecutionProvider.jsonl'))}
b = {r['id']: r.get('text') for r in map(json.loads, open('/tmp/f16-CUDAExecutionProvider.jsonl'))}
print('float16-cache edgeds infer: same text on CUDA as on the CPU for',
      sum(a[k] == b.get(k) for k in a), 'of', len(a))" ;;
esac
