#!/bin/bash
# `--target tensorrt` graphs on ONNX Runtime's CUDA provider (the lent H200): which provider
# runs each operator (every node should land on CUDA: no contrib op falls back to the CPU),
# CUDA-vs-CPU logits (the cache in device memory, and in numpy buffers), and batch 1 and 16
# decode tok/s of the 1.5B shape, to record beside benchmarks/results/cuda-h200.md.
# Set up as cuda_device.sh (onnxruntime-gpu in /tmp/gsite, .carry with the reference configs), then:
#   bash benchmarks/devices/tensorrt_target_device.sh prepare
#   bash benchmarks/devices/tensorrt_target_device.sh measure
set -eo pipefail
source benchmarks/devices/checkout_env.sh /tmp/gsite
A=/tmp/trt-art
case "$1" in
  prepare)
    python3 -m benchmarks.random_checkpoint \
      .carry/reference/configs/deepseek-r1-distill-qwen-1.5b.json /tmp/r1-1.5b \
      .carry/reference/deepseek-v3-tokenizer
    python3 -m edgeds.cli export /tmp/r1-1.5b -o $A/int8 --target tensorrt --context 2048 \
      --max-batch 16 --overwrite 2>&1 | tail -1
    python3 -m edgeds.cli doctor $A/int8 --tensorrt ;;
  measure)
    G=CUDAExecutionProvider,CPUExecutionProvider
    python3 -m benchmarks.devices.ep_placement $A/int8 --providers $G 2>&1 |
      grep -v "^W:" | tail -12
    python3 -m benchmarks.devices.provider_parity $A/int8 --providers $G --steps 16
    python3 -m benchmarks.devices.provider_parity $A/int8 --providers $G --steps 16 \
      --cache-on-host
    python3 -m benchmarks.design.backend_steps $A/int8 --providers $G --batches 1,16 ;;
  *) echo "usage: $0 prepare|measure" >&2; exit 2 ;;
esac
