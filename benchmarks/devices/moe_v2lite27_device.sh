#!/bin/bash
# Issue 22's full-depth row: DeepSeek-V2-Lite's whole shape (27 layers: 1 dense + 26 MoE, 64
# experts top-6 + 2 shared; V3's vocabulary, as moe_compare.py makes it), random weights, edgeds
# int8 (native backend) against llama.cpp and ik_llama.cpp Q8_0 on the lent 16-core AMX Xeon:
# decode at batch 1 and 16 after 128-token prompts (the rows issue 22 asks at this depth:
# ROWS), each engine's load time and peak RSS (edgeds' against its artifact + KV + 300 MB).
#
# One command, called again until it says "all measured" (each call within the tool's 10
# minutes; WORK stays between calls while the machine is held):
#   there: bash benchmarks/devices/moe_v2lite27_device.sh        (carry MOE_DIR)
# What travels (MOE_DIR, default .carry/moe3, as moe_device.sh): the peers' source tarballs
# (their converters), reference/ or reference.tar.xz (configs, V3 tokenizer), and optionally
# peers-bin.tar.xz + peers-bin.flags (binaries built there before; used where this CPU has
# every flag, else the peers build here in the background: nothing is timed meanwhile).
#
# Each call: the random checkpoint (31.6 GB bf16, drawn on THREADS threads) goes to /dev/shm
# when it has room, else beside the models; then every engine's model is made at once as far
# as the disk holds them (the edgeds export and each peer's converter writing Q8_0 itself:
# one core each, several minutes each at this size), detached, so that a call may end while they
# run; once nothing runs, each made model is measured alone (moe_compare --no-report, ENGINES'
# order) and deleted, which may make room for the next. A call starts no measurement past
# BUDGET_S (s) less MEASURE_S and returns by BUDGET_S. Everything goes to $OUT (moe.log,
# ENGINE-r1.json); the report is moe_compare --collect over those (REPORT=1: here, at the end).
# LAYERS, CONFIG and the *_MIB sizes let the same steps run small, for a try on a small machine;
# KEEP_MODELS=1 keeps each model after its measurement (where the disk holds them all).
set -o pipefail
M=$(realpath "${MOE_DIR:-.carry/moe3}")
LAYERS=${LAYERS:-27} THREADS=${THREADS:-16} BUILD=${PEERS_BUILD:-/tmp/peerbuild}
WORK=${WORK:-/tmp/moe-$LAYERS} MACHINE=${MACHINE:-xeon-amx-16t-${LAYERS}l} OUT=${OUT:-$WORK/out}
ENGINES=${ENGINES:-edgeds-native,llama.cpp,ik_llama.cpp} ROWS=${ROWS:-decode_b1_128,decode_b16_128}
BUDGET_S=${BUDGET_S:-570} MEASURE_S=${MEASURE_S:-120} REPORT=${REPORT:-0}
# What each thing takes on disk (MiB; V2-Lite at 27 layers: checkpoint 29.3 GiB, edgeds int8
# 15.1 GiB, a Q8_0 GGUF about 16.2 GiB), with a margin.
CKPT_MIB=${CKPT_MIB:-30500} EDGEDS_MIB=${EDGEDS_MIB:-15800} GGUF_MIB=${GGUF_MIB:-17000}
MC=benchmarks.peers.moe_compare
source benchmarks/devices/checkout_env.sh
mkdir -p "$WORK/state" "$OUT"
[ -d "$M/reference" ] || tar -xJf "$M/reference.tar.xz" -C "$M" || exit 1
export EDGEDS_CONFIGS=$M/reference/configs
ARGS=(--layers "$LAYERS" --threads "$THREADS" --peers-src "$M" --peers-build "$BUILD"
      --work "$WORK" --machine "$MACHINE" --direct-q8 --rows "$ROWS"
      --checkpoint-threads "$THREADS" ${CONFIG:+--config "$CONFIG"})
S=$WORK/state SRC=$WORK/v2-lite-${LAYERS}l-src

log() { echo "[$(date -u +%T) +${SECONDS}s] $*" | tee -a "$OUT/moe.log"; }
model() {
  case $1 in
    edgeds-*) echo "$WORK/v2-lite-${LAYERS}l-edgeds-int8" ;;
    *) echo "$WORK/v2-lite-${LAYERS}l-$1-q8_0.gguf" ;;
  esac
}
size() { case $1 in edgeds-*) echo "$EDGEDS_MIB" ;; *) echo "$GGUF_MIB" ;; esac; }
free_mib() { df -BM --output=avail "$1" | tail -1 | tr -dc 0-9; }
used_mib() { du -smL "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

# A job's state: done (measured), made, running, failed or todo. A job whose process is gone
# without an exit status (a call's end took it) starts again, its partial output deleted.
state() {
  local j=$1
  [ -f "$S/$j.done" ] && { echo done; return; }
  if [ -f "$S/$j.rc" ]; then
    [ "$(cat "$S/$j.rc")" = 0 ] && echo made || echo failed
    return
  fi
  if [ -f "$S/$j.pid" ] && kill -0 "$(cat "$S/$j.pid")" 2>/dev/null; then echo running; return; fi
  if [ -f "$S/$j.pid" ]; then
    log "$j: its process is gone without an exit status: starting it again" >&2
    rm -rf "$S/$j.pid" "$(model "$j")" "$(model "$j")".part
  fi
  echo todo
}
start() {  # detached: it outlives this call where the machine lets it
  local j=$1; shift
  log "start $j"
  echo $$ > "$S/$j.pid"  # this shell's, until the job's own shell writes its pid
  setsid nohup bash -c 'echo $$ > "'"$S/$j.pid"'"; "$@" > "'"$S/$j.log"'" 2>&1
    echo $? > "'"$S/$j.rc"'"' _ "$@" < /dev/null > /dev/null 2>&1 &
  sleep 1
}

machine() {
  lscpu | grep -E '^(Model name|Thread|Core|Socket|NUMA node\(s\))'
  grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  free -g | head -2; df -h "$WORK" /dev/shm | tail -2; nproc
  git log -1 --format='%H %s' 2>/dev/null
}

peers() {  # the peers' binaries: built before (here or carried), else a build job
  local p missing=()
  for p in ${ENGINES//,/ }; do
    case $p in edgeds-*) ;; *) [ -x "$BUILD/$p/bin/llama-batched-bench" ] || missing+=("$p") ;; esac
  done
  [ ${#missing[@]} = 0 ] && return
  if [ -f "$M/peers-bin.tar.xz" ] && [ -z "$(comm -23 <(tr ' ' '\n' < "$M/peers-bin.flags" \
      | sort -u) <(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | sort -u))" ]
  then
    for p in llama.cpp ik_llama.cpp; do mkdir -p "$BUILD/$p/bin"; done
    tar -xJf "$M/peers-bin.tar.xz" -C "$BUILD" --transform 's|^\([^/]*\)/|\1/bin/|' \
      && log "peers: carried binaries (built for these CPU flags)" && return
  fi
  [ "$(state build)" = todo ] \
    && start build nice bash benchmarks/peers/build_peers.sh build "$M" "$BUILD" \
      "$([ ${#missing[@]} = 1 ] && echo "${missing[0]}" || echo both)" "$THREADS"
}

# Start what the disk holds: the first model writes the checkpoint, the others wait for it.
start_jobs() {
  local e reserved=0 r free need pending=
  for e in ${ENGINES//,/ }; do
    r=$(state "$e")
    [ "$r" = running ] && reserved=$((reserved + $(size "$e") - $(used_mib "$(model "$e")"*)))
    [ "$r" = todo ] && pending+=" $e"
  done
  [ -z "$pending" ] && return
  if [ ! -f "$SRC/model.safetensors.index.json" ]; then
    [ "$reserved" -gt 0 ] && return  # a running job is writing it
    if [ ! -e "$SRC" ] && [ "${SHM:-1}" = 1 ] && [ "$(free_mib /dev/shm)" -gt $((CKPT_MIB + 4096)) ]
    then
      mkdir -p /dev/shm/moe-src && ln -sfn /dev/shm/moe-src "$SRC" \
        && log "checkpoint in /dev/shm ($(free_mib /dev/shm) MiB free there)"
    fi
    [ -L "$SRC" ] || reserved=$((reserved + CKPT_MIB))
  fi
  free=$(free_mib "$WORK")
  for e in $pending; do
    need=$(( $(size "$e") + reserved ))
    if [ "$free" -lt "$need" ]; then
      log "$e waits: $free MiB free under $WORK, it needs $need with what runs"; continue
    fi
    start "$e" python3 -m $MC "${ARGS[@]}" --engines "$e" --prepare-only
    reserved=$need
    [ -f "$SRC/model.safetensors.index.json" ] || return  # this one writes the checkpoint
  done
}

measure() {
  local e=$1
  log "measure $e"
  python3 -m $MC "${ARGS[@]}" --engines "$e" --no-report 2>&1 | tee -a "$OUT/moe.log"
  if cp "$WORK/$e.json" "$WORK/$e-r1.json" 2>/dev/null && cp "$WORK/$e-r1.json" "$OUT/"; then
    touch "$S/$e.done"
  else
    echo 1 > "$S/$e.rc"; log "$e: no result"
  fi
  [ "${KEEP_MODELS:-0}" = 1 ] || rm -rf "$(model "$e")"  # room for the next model
}

[ -s "$OUT/machine.txt" ] || machine > "$OUT/machine.txt"
log "call starts (budget ${BUDGET_S} s)"
peers
while :; do
  start_jobs
  running= made= left=
  for j in build ${ENGINES//,/ }; do
    r=$(state "$j")
    case $r in running) running+=" $j" ;; made) [ "$j" = build ] || made+=" $j" ;; esac
    case $r in todo|running|made) [ "$j" = build ] || left+=" $j" ;; esac
    if [ "$r" = failed ] && [ ! -f "$S/$j.reported" ]; then
      log "$j failed:"; tail -20 "$S/$j.log" | tee -a "$OUT/moe.log"; touch "$S/$j.reported"
    fi
  done
  if [ -z "$running" ] && [ -e "$SRC" ] \
      && ! grep -qw todo <(for e in ${ENGINES//,/ }; do state "$e"; done); then
    log "every model made: the checkpoint goes"; rm -rf "$(readlink -f "$SRC")" "$SRC"
  fi
  [ -z "$left" ] && break
  if [ -z "$running" ] && [ -n "$made" ]; then  # measured alone: nothing else runs
    e=${made# }; e=${e%% *}
    if [ $((SECONDS + MEASURE_S)) -gt "$BUDGET_S" ]; then
      log "no time left in this call to measure $e: call again"; exit 0
    fi
    measure "$e"; continue
  fi
  if [ -z "$running" ]; then log "nothing runs and nothing can start:$left"; exit 1; fi
  if [ $((SECONDS + 10)) -gt "$BUDGET_S" ]; then
    log "running:$running ($(du -shL "$WORK" | cut -f1) under $WORK): call again"
    for j in $running; do tail -2 "$S/$j.log" >> "$OUT/moe.log"; done
    exit 0
  fi
  sleep 5
done
log "all measured"
for j in build ${ENGINES//,/ }; do cp "$S/$j.log" "$OUT/prepare-$j.log" 2>/dev/null; done
if [ "$REPORT" = 1 ]; then
  collect=$(cd "$WORK" && ls ./*-r1.json 2>/dev/null | sed 's|^\./||; s|-r1.json$||' | paste -sd,)
  python3 -m $MC "${ARGS[@]}" --engines none --collect "$collect" \
    ${COMMAND:+--command "$COMMAND"} 2>&1 | tee -a "$OUT/moe.log"
  cp benchmarks/results/moe-$MACHINE.md benchmarks/results/moe-$MACHINE.json "$OUT"/
fi
