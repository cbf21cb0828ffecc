#!/bin/bash
# The MLA+MoE side-by-side (benchmarks/peers/moe_compare.py) on the lent 16-core AMX Xeon
# (device tool), in calls that each fit 10 minutes. What travels in an ignored folder, .moebench:
#   here:  bash benchmarks/peers/build_peers.sh sources SDIST IK_GIT .moebench
#          cp -r ../shared/reference .moebench/          (configs and the V3 tokenizer)
# Call 1, carrying .moebench: build both peers (in parallel) while the checkpoint, the edgeds
# export and the bf16 GGUFs are made, then quantize; the peers' binaries come back in $OUT
# (peers-bin.tar.xz: put it in .moebench and a later, fresh machine skips the build):
#   there: bash benchmarks/devices/moe_device.sh prepare
# Call 2, within 30 s of call 1 (the machine keeps /tmp that long), every engine in turns:
#   there: bash benchmarks/devices/moe_device.sh run [ENGINES] [moe_compare options, e.g. --rounds 2]
# Results of earlier calls (their engine JSON files in .moebench/results) join a report:
#   there: bash benchmarks/devices/moe_device.sh run edgeds-native --reuse llama.cpp,ik_llama.cpp
# LAYERS=27 for the whole V2-Lite depth (about 16 GB int8; the same steps).
set -eo pipefail
M=${MOE_DIR:-.moebench}
LAYERS=${LAYERS:-8}
WORK=/tmp/moe-$LAYERS P=benchmarks/peers
source benchmarks/devices/checkout_env.sh
export EDGEDS_CONFIGS=$PWD/$M/reference/configs
ARGS=(--layers "$LAYERS" --threads 16 --peers-src "$M" --peers-build /tmp/peerbuild --work "$WORK"
      --machine "xeon-amx-16t-${LAYERS}l")
case "$1" in
  prepare)
    lscpu | grep -E '^(Model name|Thread|Core|Socket|NUMA node\(s\))'
    grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
    free -g | head -2; df -h /tmp | tail -1; gcc --version | head -1
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__)"
    build=
    if [ -f "$M/peers-bin.tar.xz" ]; then
      mkdir -p /tmp/peerbuild && tar -xJf "$M/peers-bin.tar.xz" -C /tmp/peerbuild
    else
      bash $P/build_peers.sh build "$M" /tmp/peerbuild both 16 >/tmp/peer-build.log 2>&1 &
      build=$!
    fi
    # Checkpoint, edgeds export, bf16 GGUFs meanwhile; quantizing waits for the peers' tools.
    python3 -m benchmarks.peers.moe_compare "${ARGS[@]}" --prepare-only \
      --engines edgeds-onnxruntime,llama.cpp,ik_llama.cpp
    if [ -n "$build" ]; then
      wait "$build" || { tail -40 /tmp/peer-build.log; exit 1; }
      tar -C /tmp/peerbuild -cJf "$OUT/peers-bin.tar.xz" llama.cpp/bin ik_llama.cpp/bin
    fi
    python3 -m benchmarks.peers.moe_compare "${ARGS[@]}" --prepare-only --engines llama.cpp,ik_llama.cpp
    ls -l "$WORK" ;;
  run)
    engines=${2:-edgeds-native,edgeds-onnxruntime,llama.cpp,ik_llama.cpp}
    mkdir -p "$WORK" && cp "$M"/results/*.json "$WORK"/ 2>/dev/null || true
    python3 -m benchmarks.peers.moe_compare "${ARGS[@]}" --engines "$engines" "${@:3}" 2>&1 \
      | tee "$OUT/moe.log"
    cp benchmarks/results/moe-xeon-amx-16t-"${LAYERS}"l.* "$OUT"/ 2>/dev/null || true
    tar -C "$WORK" -cf "$OUT/engines.tar" $(cd "$WORK" && ls ./*.json) ;;
  *) sed -n 2,16p "$0" >&2; exit 2 ;;
esac
