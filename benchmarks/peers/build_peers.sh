#!/bin/bash
# Builds the MoE comparison's two peers from source, CPU only, for the machine it runs on
# (GGML_NATIVE), static, only the tools the harness runs: llama.cpp (the tree vendored in the
# llama-cpp-python sdist) and ik_llama.cpp. The peers are benchmark extras, never edgeds
# dependencies, and no peer code is kept in this repository.
#
#   bash benchmarks/peers/build_peers.sh sources SDIST IK_GIT OUTDIR  # source tarballs, once
#   bash benchmarks/peers/build_peers.sh build SRCDIR BUILDDIR [llama.cpp|ik_llama.cpp|both] [JOBS]
#
# sources: SDIST from `pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all:`,
# IK_GIT a clone (or bare mirror) of github.com/ikawrakow/ik_llama.cpp; writes
# OUTDIR/llama.cpp.tar.xz and OUTDIR/ik_llama.cpp.tar.xz (about 7 MB together, so they can
# travel to a machine without network) without GPU backends, models, docs and tests.
# build: both peers at once when asked for both (JOBS split between them), into
# BUILDDIR/<peer>/bin/{llama-batched-bench,llama-quantize}.
set -euo pipefail

# ik_llama.cpp takes a deepseek2 GGUF for V2-Lite (no q_lora_rank) only at 26 or 27 layers; a
# depth-cut model needs those three tests to ask the model itself: its q_lora_rank, absent or 0.
patch_ik() {
    local src=$1
    local test='bool is_lite = (hparams.n_layer == 27 || hparams.n_layer == 26)'
    local read='ml.get_key(LLM_KV_ATTENTION_Q_LORA_RANK, hparams.n_lora_q, false)'
    sed -i "s/$test/bool is_lite = ($read, hparams.n_lora_q == 0)/" "$src/src/llama-hparams.cpp"
    sed -i "s/$test;/bool is_lite = (hparams.n_lora_q == 0);/" \
        "$src/src/graphs/build_deepseek2.cpp" "$src/src/llama-load-tensors.cpp"
    # Its batched-bench feeds token 0 everywhere: every sequence of a batch would be the same
    # text and route to the same experts. Random tokens, as llama.cpp's batched-bench feeds.
    local bench=$src/examples/batched-bench/batched-bench.cpp
    local rnd='std::rand() % llama_n_vocab(model)'
    sed -i "s/common_batch_add(batch, 0, /common_batch_add(batch, $rnd, /" "$bench"
    sed -i '1i #include <cstdlib>' "$bench"
    local left
    left=$(cd "$src/src" && grep -c 'n_layer == 27 || hparams.n_layer == 26' llama-hparams.cpp \
        graphs/build_deepseek2.cpp llama-load-tensors.cpp | grep -vc ':0$' || true)
    if [ "$left" != 0 ] || grep -q 'common_batch_add(batch, 0, ' "$bench"; then
        echo "build_peers: ik_llama.cpp's sources changed; its patch did not apply" >&2
        exit 1
    fi
}

sources() {
    local sdist=$1 ik_git=$2 out=$3 tmp
    tmp=$(mktemp -d)
    mkdir -p "$out"
    tar -xzf "$sdist" -C "$tmp"
    local gpu='ggml-cuda ggml-vulkan ggml-sycl ggml-metal ggml-opencl ggml-cann ggml-hexagon
        ggml-musa ggml-hip ggml-webgpu ggml-openvino ggml-zdnn ggml-zendnn ggml-virtgpu ggml-et'
    local ex=()
    for d in models docs media tests tools/ui benches; do ex+=(--exclude="llama.cpp/$d"); done
    for b in $gpu; do ex+=(--exclude="llama.cpp/ggml/src/$b"); done
    tar -C "$tmp"/llama_cpp_python-*/vendor "${ex[@]}" -cJf "$out/llama.cpp.tar.xz" llama.cpp
    # Large web-UI and vocabulary blobs are left out (a partial mirror may lack them).
    mkdir -p "$tmp/ik_llama.cpp"
    git -C "$ik_git" archive HEAD -- . ':(exclude)examples/server' ':(exclude)models' \
        ':(exclude)docs' ':(exclude)media' ':(exclude)github-data' ':(exclude)tests' \
        ':(exclude)ggml/src/ggml-cuda' ':(exclude)ggml/src/vulkan-shaders' \
        ':(exclude)ggml/src/ggml-sycl' ':(exclude)ggml/src/ggml-cann' \
        ':(exclude)vendor/miniaudio' | tar -x -C "$tmp/ik_llama.cpp"
    git -C "$ik_git" log -1 --format=%H > "$tmp/ik_llama.cpp/COMMIT"
    tar -C "$tmp" -cJf "$out/ik_llama.cpp.tar.xz" ik_llama.cpp
    rm -rf "$tmp"
    ls -l "$out"
}

build_one() {
    local name=$1 srcdir=$2 build=$3 jobs=$4
    local src=$build/$name-src
    rm -rf "$src" && mkdir -p "$src"
    tar -xJf "$srcdir/$name.tar.xz" -C "$src" --strip-components=1
    [ "$name" = ik_llama.cpp ] && patch_ik "$src"
    cmake -S "$src" -B "$build/$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF > "$build/$name.configure.log" 2>&1 \
        || { tail -30 "$build/$name.configure.log"; exit 1; }
    cmake --build "$build/$name" -j "$jobs" --target llama-batched-bench llama-quantize \
        > "$build/$name.build.log" 2>&1 || { tail -30 "$build/$name.build.log"; exit 1; }
    echo "built $name"
}

case "${1:-}" in
    sources) sources "$2" "$3" "$4" ;;
    build)
        srcdir=$(realpath "$2") build=$3 which=${4:-both} jobs=${5:-$(nproc)}
        mkdir -p "$build" && build=$(realpath "$build")
        if [ "$which" = both ]; then
            half=$(( (jobs + 1) / 2 ))
            build_one llama.cpp "$srcdir" "$build" "$half" & a=$!
            build_one ik_llama.cpp "$srcdir" "$build" "$half" & b=$!
            wait $a && wait $b
        else
            build_one "$which" "$srcdir" "$build" "$jobs"
        fi ;;
    *) sed -n 2,15p "$0" >&2; exit 2 ;;
esac
