#!/usr/bin/env bash
# Wheels for peers and Triton versions the lent GPU (python 3.12, no network) does not have, cut into pieces of
# < 64 MiB for the device tool's carry (each piece in its own call, back to back while the machine is warm).
#   bash scripts/gpu_wheels.sh fa4       -> .fa/a (half of the cu13 DSL wheel + the small ones), .fa/b (the rest)
#   bash scripts/gpu_wheels.sh triton39  -> .tw/a, .tw/b: triton 3.9.0 without AMD, CUPTI and the old ptxas,
#                                           as two halves of one tar.xz (see scripts/gpu_triton39.sh)
set -eu
cd "$(dirname "$0")/.."
for d in /.fa/ /.tw/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
PIP="python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
T=$(mktemp -d)
case "${1:-}" in
  fa4)
    $PIP -d $T flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
        nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
        torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
    $PIP -d $T/alt flash-attn-4==4.0.0b40
    rm -rf .fa && mkdir -p .fa/a .fa/b/alt
    split -n 2 -d $T/nvidia_cutlass_dsl_libs_cu13-*.whl $T/cu13p
    mv $T/cu13p00 .fa/a/a1.part && mv $T/cu13p01 .fa/b/a2.part && rm $T/nvidia_cutlass_dsl_libs_cu13-*.whl
    mv $T/*.whl .fa/a/ && mv $T/alt/*.whl .fa/b/alt/ ;;
  triton39)
    $PIP -d $T triton==3.9.0
    mkdir -p $T/x && (cd $T/x && unzip -q $T/triton-*.whl && rm -rf triton/backends/amd triton/instrumentation \
        triton/backends/nvidia/lib/cupti triton/backends/nvidia/lib/cupti-blackwell triton/backends/nvidia/bin/ptxas \
        && sed -i '/amd/d' triton-*.dist-info/entry_points.txt)   # 3.9 compiles sm_90 with ptxas-blackwell
    tar cf - -C $T/x . | xz -T2 -6 > $T/t39.tar.xz
    rm -rf .tw && mkdir -p .tw/a .tw/b && split -n 2 -d $T/t39.tar.xz $T/p && mv $T/p00 .tw/a/a.part && mv $T/p01 .tw/b/b.part ;;
  *) echo "usage: $0 fa4|triton39" >&2; exit 2 ;;
esac
rm -rf $T; du -sh .fa/* .tw/* 2>/dev/null || true
