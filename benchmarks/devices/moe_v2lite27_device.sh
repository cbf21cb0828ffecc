#!/bin/bash
# Issue 22's full-depth row, prepared and NOT run yet: DeepSeek-V2-Lite's whole shape (27 layers:
# 1 dense + 26 MoE, 64 experts top-6 + 2 shared; V3's vocabulary, as moe_compare.py makes it),
# random weights, edgeds int8 (about 16 GB) against llama.cpp and ik_llama.cpp Q8_0, batch 1 and
# 16 (moe_compare.py's rows: prefill 512, decode batch 1 after 128 and 4,096, batch 16 and 64),
# on the lent 16-core AMX Xeon, whose disk is 64 GiB.
#
# Disk: the bf16 checkpoint is 31.6 GB, each model about 16-17 GB: checkpoint + edgeds + two
# GGUFs (81 GB) or bf16 GGUFs (31.6 GB each) do not fit. So one model lives at a time: each phase
# writes the checkpoint (seed 0: the same weights every time, benchmarks/random_checkpoint.py),
# makes its engine's model, deletes the checkpoint, measures, deletes the model. The peers'
# converters write Q8_0 themselves (--direct-q8: gguf-py's Q8_0, no bf16 GGUF, no llama-quantize,
# so mainline's q_lora_rank override is not needed; at 27 layers both peers take V2-Lite as it is,
# ik_llama.cpp unpatched). Peak: 31.6 + 16.8 GB, plus the peers' build.
#
# What travels (MOE_DIR, default .carry/moebench, as moe_device.sh):
#   here:  bash benchmarks/peers/build_peers.sh sources SDIST IK_GIT .carry/moebench
#          cp -r ../shared/reference .carry/moebench/
#          (optionally peers-bin.tar.xz + peers-bin.flags, as moe_device.sh: no build there)
# Calls, in order, on ONE warm machine (WORK stays between calls only while it is held), each
# within the 10-minute limit (estimates from export_cost.md's 324 s V2-Lite export on 2 CPUs and
# the 8-layer run; not measured at this depth):
#   bash benchmarks/devices/moe_v2lite27_device.sh prep-edgeds   # checkpoint, export (~7 min)
#   bash benchmarks/devices/moe_v2lite27_device.sh edgeds        # both edgeds backends (~5 min)
#   bash benchmarks/devices/moe_v2lite27_device.sh peer llama.cpp     # build/convert/run (~9 min)
#   bash benchmarks/devices/moe_v2lite27_device.sh peer ik_llama.cpp  # (~9 min)
#   bash benchmarks/devices/moe_v2lite27_device.sh report        # results/moe-xeon-amx-16t-27l
# About 30 minutes of device time with the machine start: the whole session budget, and at the
# 30-minute hold limit; drop edgeds-onnxruntime (EDGEDS=edgeds-native) or run the peers in a
# later session (their JSON in MOE_DIR/results joins the report) to fit less.
set -o pipefail
M=$(realpath "${MOE_DIR:-.carry/moebench}")
LAYERS=27 THREADS=${THREADS:-16} BUILD=${PEERS_BUILD:-/tmp/peerbuild}
WORK=${WORK:-/tmp/moe-27} MACHINE=${MACHINE:-xeon-amx-16t-27l}
MC=benchmarks.peers.moe_compare
EDGEDS=${EDGEDS:-edgeds-native,edgeds-onnxruntime}
source benchmarks/devices/checkout_env.sh
export EDGEDS_CONFIGS=$M/reference/configs
ARGS=(--layers "$LAYERS" --threads "$THREADS" --peers-src "$M" --peers-build "$BUILD"
      --work "$WORK" --machine "$MACHINE" --direct-q8 --drop-checkpoint)
mkdir -p "$WORK" "$OUT"

# Refuse a step the disk cannot take (GB free under WORK), rather than fill it midway.
need() {
  local free
  free=$(df -BG --output=avail "$WORK" | tail -1 | tr -dc 0-9)
  echo "disk: $free GB free under $WORK, this step needs $1 GB" | tee -a "$OUT/moe.log"
  [ "$free" -ge "$1" ] || { echo "not enough disk: stop" | tee -a "$OUT/moe.log"; exit 1; }
}

# One engine's rows (moe_compare --no-report), its JSON into $OUT and kept for the report.
measure() {
  python3 -m $MC "${ARGS[@]}" --engines "$1" --no-report 2>&1 | tee -a "$OUT/moe.log" || exit 1
  cp "$WORK/$1.json" "$WORK/$1-r1.json" && cp "$WORK/$1-r1.json" "$OUT/"
}

peers_ready() {  # the peers' binaries: carried (same CPU flags) or built here
  [ -x "$BUILD/$1/bin/llama-batched-bench" ] && return 0
  if [ -f "$M/peers-bin.tar.xz" ]; then
    for p in llama.cpp ik_llama.cpp; do mkdir -p "$BUILD/$p/bin"; done
    tar -xJf "$M/peers-bin.tar.xz" -C "$BUILD" --transform 's|^\([^/]*\)/|\1/bin/|'
    [ -x "$BUILD/$1/bin/llama-batched-bench" ] && return 0
  fi
  bash benchmarks/peers/build_peers.sh build "$M" "$BUILD" "$1" "$THREADS" \
    > "/tmp/peer-build-$1.log" 2>&1 || { tail -30 "/tmp/peer-build-$1.log"; exit 1; }
}

case "$1" in
  prep-edgeds)
    { lscpu | grep -E '^(Model name|Core|Socket)'; free -g | head -2; df -h "$WORK" | tail -1; } \
      | tee "$OUT/moe.log"
    need 52  # checkpoint 31.6 + export 16 (+ margin)
    python3 -m $MC "${ARGS[@]}" --engines "$EDGEDS" --prepare-only 2>&1 | tee -a "$OUT/moe.log" \
      || exit 1
    du -sh "$WORK"/* | tee -a "$OUT/moe.log" ;;
  edgeds)
    for e in ${EDGEDS//,/ }; do measure "$e"; done
    rm -rf "$WORK/v2-lite-$LAYERS"l-edgeds-int8 ;;  # the next phase's checkpoint needs the room
  peer)
    [ -n "$2" ] || { echo "peer llama.cpp | peer ik_llama.cpp" >&2; exit 2; }
    peers_ready "$2"
    need 52  # checkpoint 31.6 + Q8_0 16.8 (+ margin)
    python3 -m $MC "${ARGS[@]}" --engines "$2" --prepare-only 2>&1 | tee -a "$OUT/moe.log" \
      || exit 1
    measure "$2"
    rm -f "$WORK/v2-lite-$LAYERS"l-"$2"-q8_0.gguf ;;
  report)
    cp "$M"/results/*-r1.json "$WORK"/ 2>/dev/null  # rows of an earlier session, if carried
    collect=$(cd "$WORK" && ls ./*-r1.json 2>/dev/null | sed 's|^\./||; s|-r1.json$||' | paste -sd,)
    python3 -m $MC "${ARGS[@]}" --engines none --collect "$collect" 2>&1 | tee -a "$OUT/moe.log"
    cp benchmarks/results/moe-$MACHINE.md benchmarks/results/moe-$MACHINE.json "$OUT"/ ;;
  *) sed -n 2,33p "$0" >&2; exit 2 ;;
esac
