#!/bin/bash
# The MLA+MoE side-by-side (benchmarks/peers/moe_compare.py) on the lent 16-core AMX Xeon (device
# tool), each step within one call of 10 minutes. What travels in an ignored folder (MOE_DIR,
# default .carry/moebench; about 15 MB):
#   here:  bash benchmarks/peers/build_peers.sh sources SDIST IK_GIT .carry/moebench
#          cp -r ../shared/reference .carry/moebench/       (configs and the V3 tokenizer)
# One call, carrying that folder, does everything (about 8 minutes):
#   there: bash benchmarks/devices/moe_device.sh all [ENGINES]
#     the peers build (GGML_NATIVE, in the background) while the checkpoint, the edgeds export and
#     the peers' bf16 GGUFs are made and the AMX checks run (tests/test_native_mla.py, ONNX
#     Runtime's empty-expert test, benchmarks/devices/native_amx_parity.py: nothing is timed
#     then); then quantize, then every engine alone, one after another, each engine's JSON into
#     $OUT as it ends; then the report (results/moe-xeon-amx-16t-8l.md, .json) into $OUT.
# A later call (a fresh machine) for edgeds alone, the peers' JSON of an earlier call in
# MOE_DIR/results joining its report:
#   there: bash benchmarks/devices/moe_device.sh edgeds [ENGINES] [TESTS]
# Another round on the same warm machine (each engine's rows kept as ENGINE-rN.json; the report
# gives each row's median and range over the rounds):
#   there: bash benchmarks/devices/moe_device.sh round N [ENGINES]
# Batch 1 after longer prompts (issue 23's depths), each engine alone, into ENGINE-depth.json,
# which the report joins to the engine's rows:
#   there: bash benchmarks/devices/moe_device.sh depth 16384[,32768] [ENGINES]
# Peers built ahead (a machine with the same CPU flags, GGML_NATIVE) may travel instead of being
# built there: MOE_DIR/peers-bin.tar.xz (<peer>/llama-batched-bench, llama-quantize, stripped)
# and MOE_DIR/peers-bin.flags (/proc/cpuinfo's flags where they were built); they are used only
# where the machine has every one of those flags, else the peers are built as above.
# LAYERS=27 for the whole V2-Lite depth (about 16 GB int8; the same steps).
# The decode attention kernels side by side on the artifact of an `all` call (phase timers; the
# engines' rows above run the backend's default kernel):
#   there: python3 -m benchmarks.kernels.mla_decode_profile --layers 8 --threads 16 \
#            --work /tmp/moe-8 --batches 1 --prompts 128,4096,16384 --phases-only --no-ort \
#            --decode-kernels tiles,bf16,fma
set -o pipefail
M=$(realpath "${MOE_DIR:-.carry/moebench}")
LAYERS=${LAYERS:-8} THREADS=${THREADS:-16} BUILD=${PEERS_BUILD:-/tmp/peerbuild}
WORK=${WORK:-/tmp/moe-$LAYERS} MACHINE=${MACHINE:-xeon-amx-16t-${LAYERS}l}
P=benchmarks/peers MC=benchmarks.peers.moe_compare
source benchmarks/devices/checkout_env.sh
export EDGEDS_CONFIGS=$M/reference/configs
# CONFIG (other widths) and the variables above let the same steps run small, for a try here.
ARGS=(--layers "$LAYERS" --threads "$THREADS" --peers-src "$M" --peers-build "$BUILD"
      --work "$WORK" --machine "$MACHINE" ${CONFIG:+--config "$CONFIG"})
PEERS=llama.cpp,ik_llama.cpp EDGEDS=edgeds-native,edgeds-onnxruntime
# (the profile test's fp32 artifact is exported with OpenVINO, which the device lacks)
AMX_TESTS=${AMX_TESTS:-"tests/test_native_mla.py tests/test_native_mla_tiles.py
  tests/test_mla_moe.py::test_int8_decode_runs_experts_no_token_chose
  --deselect tests/test_native_mla.py::test_the_avx512_profile_picks_native_for_an_int8_deepseek_export_and_says_why"}

machine() {
  lscpu | grep -E '^(Model name|Thread|Core|Socket|NUMA node\(s\))'
  grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  free -g | head -2; df -h /tmp | tail -1; gcc --version | head -1
  python3 -c "import onnxruntime as o, numpy as n
print('onnxruntime', o.__version__, n.__version__)"
}

# The AMX checks: untimed, so they may share the CPU with the build and the export (the tests
# need no export: they start with it; the parity of AMX tiles and VNNI needs the export).
check_tests() {
  { python3 -m pytest -q -p no:cacheprovider $1 2>&1 | tail -15
    echo "pytest exit: $?"; } > "$OUT/checks.log"
}
check_amx() {
  { python3 -m benchmarks.devices.native_amx_parity "$WORK/v2-lite-${LAYERS}l-edgeds-int8" \
      --threads "$THREADS" 2>&1
    echo "amx parity exit: $?"; } >> "$OUT/checks.log"
}

# Each engine alone, its JSON into $OUT the moment it ends (a call cut short keeps what ended).
measure() {
  for e in ${1//,/ }; do
    python3 -m $MC "${ARGS[@]}" --engines "$e" --no-report 2>&1 | tee -a "$OUT/moe.log"
    cp "$WORK/$e.json" "$WORK/$e-r${ROUND:-1}.json" 2>/dev/null \
      && cp "$WORK/$e-r${ROUND:-1}.json" "$OUT/"
  done
}

# The peers from MOE_DIR/peers-bin.tar.xz where this CPU has every flag they were built for.
carried_peers() {
  [ -f "$M/peers-bin.tar.xz" ] || return 1
  local missing
  missing=$(comm -23 <(tr ' ' '\n' < "$M/peers-bin.flags" | sort -u) \
    <(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | sort -u) | tr '\n' ' ')
  if [ -n "${missing// /}" ]; then
    echo "carried peers not used: this CPU lacks $missing"; return 1
  fi
  for p in ${PEERS//,/ }; do mkdir -p "$BUILD/$p/bin"; done
  tar -xJf "$M/peers-bin.tar.xz" -C "$BUILD" --transform 's|^\([^/]*\)/|\1/bin/|'
  echo "peers: carried binaries (built for these CPU flags)"
}

# The report of this call's engines (--collect) and of an earlier call's (--reuse, MOE_DIR/results).
report() {
  local collect= reuse= e
  for e in ${PEERS//,/ } ${EDGEDS//,/ }; do
    if compgen -G "$WORK/$e-r*.json" > /dev/null; then collect+=${collect:+,}$e
    elif [ -f "$WORK/$e.json" ]; then reuse+=${reuse:+,}$e; fi
  done
  python3 -m $MC "${ARGS[@]}" --engines none --collect "$collect" --reuse "$reuse" \
    ${COMMAND:+--command "$COMMAND"} 2>&1 | tee -a "$OUT/moe.log"
  cp benchmarks/results/moe-$MACHINE.md benchmarks/results/moe-$MACHINE.json "$OUT"/
}

case "$1" in
  all)
    engines=${2:-$PEERS,$EDGEDS}
    machine | tee "$OUT/moe.log"
    if [ -x "$BUILD/ik_llama.cpp/bin/llama-batched-bench" ] \
        && [ -x "$BUILD/llama.cpp/bin/llama-batched-bench" ]; then
      true & build=$!  # built by an earlier call on this machine
    elif carried_peers | tee -a "$OUT/moe.log" | grep -q '^peers: carried'; then
      true & build=$!
    else
      bash $P/build_peers.sh build "$M" "$BUILD" both "$THREADS" >/tmp/peer-build.log 2>&1 &
      build=$!
    fi
    check_tests "$AMX_TESTS" & checked=$!
    # Checkpoint, edgeds export, bf16 GGUFs meanwhile; quantizing waits for the peers' tools.
    python3 -m $MC "${ARGS[@]}" --prepare-only --engines "$engines" 2>&1 | tee -a "$OUT/moe.log" \
      || exit 1
    wait "$checked"; check_amx & checked=$!
    wait "$build" || { tail -40 /tmp/peer-build.log; }
    grep -h 'built' /tmp/peer-build.log 2>/dev/null
    wait "$checked"; cat "$OUT/checks.log"
    python3 -m $MC "${ARGS[@]}" --prepare-only --engines "$engines" 2>&1 | tee -a "$OUT/moe.log"
    ls -l "$WORK" | tee -a "$OUT/moe.log"
    measure "$engines"
    report ;;
  edgeds)
    engines=${2:-$EDGEDS}
    machine | tee "$OUT/moe.log"
    mkdir -p "$WORK" && cp "$M"/results/*.json "$WORK"/ 2>/dev/null
    python3 -m $MC "${ARGS[@]}" --prepare-only --engines "$engines" 2>&1 | tee -a "$OUT/moe.log" \
      || exit 1
    check_tests "${3:-$AMX_TESTS}"; check_amx; cat "$OUT/checks.log"
    measure "$engines"
    report ;;
  round)
    ROUND=$2 measure "${3:-$PEERS,$EDGEDS}"
    report ;;
  depth)
    for e in ${3//,/ }; do
      python3 -m $MC "${ARGS[@]}" --engines "$e" --depths "$2" --depth-only --no-report 2>&1 \
        | tee -a "$OUT/moe.log"
      cp "$WORK/$e-depth.json" "$OUT/" 2>/dev/null
    done
    report ;;
  *) sed -n 2,28p "$0" >&2; exit 2 ;;
esac
