#!/bin/bash
# Issue 26's Ray targets on the lent 16-core AMX Xeon (device tool): N actors x K threads against
# one local 16-thread job, and a simulated cluster of 4-CPU nodes
# (benchmarks/design/ray_scaling.py), on R1-Distill-Qwen-1.5B widths (random weights, int8,
# native dense backend).
#
# Ray is not in the device image and its wheel (79 MB) does not fit beside the working tree in a
# call's 64 MiB. What travels instead is an xz tarball (18 MB) of ray 2.60.0 for cp312 unpacked,
# without its Java jars, rllib, serve, tune, train, llm and the dashboard's web client (none of
# which `ray.init`, Ray Data or ray.cluster_utils import), its binaries and extension modules
# stripped of their symbol tables, plus jsonschema and the three packages it needs (the image
# lacks them), with the published config and the tokenizer (xz):
#   here:  bash benchmarks/devices/ray_device.sh pack        (writes .carry/raywheel)
#   there: bash benchmarks/devices/ray_device.sh             (carry .carry/raywheel)
# RUNS (the jobs, in order), PROMPTS, TOKENS, ROUNDS, CPUS, NODE_CPUS, LAYERS (of 28) and
# DEADLINE (s: no job is started after it) as ray_scaling.py takes them; everything goes to
# $OUT: machine.txt, ray-check.txt, export.log, ray-scaling.txt and ray-scaling.json (rewritten
# after every job).
set -o pipefail
W=.carry/raywheel
if [ "$1" = pack ]; then
  set -e
  P=${PY:-3.12} D=$(mktemp -d /tmp/raywheel-XXXX)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$P" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$D/whl" ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==2026.9.1
  mkdir "$D/site" && for w in "$D"/whl/*.whl; do unzip -qo "$w" -d "$D/site"; done
  (cd "$D/site/ray" && rm -rf jars rllib serve tune train llm dashboard/client/build)
  strip --strip-unneeded "$D"/site/ray/core/src/ray/gcs/gcs_server \
    "$D"/site/ray/core/src/ray/raylet/raylet
  find "$D/site" -name '*.so' -exec strip --strip-unneeded {} +
  mkdir -p "$W" && tar -C "$D/site" -cf - . | xz -T0 -9e > "$W/ray-site.tar.xz"
  R=${REF:-../shared/reference}
  cp "$R/configs/deepseek-r1-distill-qwen-1.5b.json" "$W/"
  tar -C "$R" -cf - deepseek-v3-tokenizer | xz -9 > "$W/tokenizer.tar.xz"
  rm -rf "$D"; ls -l "$W"; exit 0
fi
OUT=${OUT:-/tmp/ray-out} LAYERS=${LAYERS:-28} PROMPTS=${PROMPTS:-512} TOKENS=${TOKENS:-64}
ROUNDS=${ROUNDS:-3} RUNS=${RUNS:-local,ray1,ray2,ray4,ray8,nodes1,nodes2,nodes4}
DEADLINE=${DEADLINE:-100000} CPUS=${CPUS:-16} NODE_CPUS=${NODE_CPUS:-4}
ART=/tmp/ray-art/r1-1.5b-${LAYERS}l
mkdir -p "$OUT" /tmp/raysite /tmp/ray-ref
[ -e /tmp/raysite/ray ] || tar -C /tmp/raysite -xJf $W/ray-site.tar.xz || exit 1
tar -C /tmp/ray-ref -xJf $W/tokenizer.tar.xz || exit 1
source benchmarks/devices/checkout_env.sh /tmp/raysite
{ lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core)'; free -g | head -2; nproc
  python3 -m pip list 2>/dev/null | grep -iE '^(protobuf|pandas|pyarrow|numpy|fsspec|click) '
  git log -1 --format='%H %s' 2>/dev/null; } > "$OUT/machine.txt"
timeout 60 python3 -c "import ray, ray.data; ray.init(num_cpus=2, include_dashboard=False)
print('ray', ray.__version__, ray.cluster_resources()); ray.shutdown()" 2>&1 | tail -8 \
  | tee "$OUT/ray-check.txt" || exit 1
grep -q "^ray 2" "$OUT/ray-check.txt" || exit 1
[ -e "$ART/edgeds.json" ] || python3 -c "
from pathlib import Path
from benchmarks.random_checkpoint import write_checkpoint
from edgeds_export import export_checkpoint
ck = write_checkpoint(Path('$W/deepseek-r1-distill-qwen-1.5b.json'), Path('/tmp/ray-ck'),
                      Path('/tmp/ray-ref/deepseek-v3-tokenizer'), layers=$LAYERS)
export_checkpoint(ck, Path('$ART'), formats=('onnx',), weights='int8', context=1024,
                  overwrite=True)" > "$OUT/export.log" 2>&1 \
  || { tail -20 "$OUT/export.log"; exit 1; }
python3 -m benchmarks.design.ray_scaling "$ART" --prompts "$PROMPTS" --new-tokens "$TOKENS" \
  --cpus "$CPUS" --node-cpus "$NODE_CPUS" --rounds "$ROUNDS" --runs "$RUNS" \
  --deadline-s "$DEADLINE" \
  --out "$OUT/ray-scaling.json" 2>&1 | tee "$OUT/ray-scaling.txt"
