#!/usr/bin/env bash
# hwattn's GPU tests, the benchmark and the warp-specialisation experiments under triton 3.9 on the lent GPU
# (which has triton 3.6): the sections of scripts/gpu_all.sh with the carried triton first on PYTHONPATH.
# Wheels: `bash scripts/gpu_wheels.sh triton39`, then two calls while warm:
#   call 1:    mkdir -p /tmp/tw && cp .tw/a/a.part /tmp/tw/      carry [".tw/a"]
#   call 2:    bash scripts/gpu_triton39.sh                       carry [".tw/b"]
# Results in $OUT/t39/results.tgz (gpu_all's archive); the section limits sum to < 600 s.
set -u
mkdir -p /tmp/t39
[ -d /tmp/t39/triton ] || cat /tmp/tw/a.part .tw/b/b.part | xz -dc -T4 | tar xf - -C /tmp/t39 || { echo unpack failed; exit 1; }
export PYTHONPATH=/tmp/t39 TRITON_CACHE_DIR=/tmp/tcache39 OUT=$OUT/t39 \
    HOPPER_N=16384 HOPPER_CONFIGS=3 HOPPER_MODES=tma,tma_ws,ptr_ws HOPPER_LIMIT=100 \
    FP8EXP_ARGS="--n 16384 --modes tma,tma_ws --cfg 128x128w8s3,128x64w4s3,128x128w4s2,64x128w4s2" FP8EXP_LIMIT=60 \
    BENCH_ARGS="--d 128 --n 4096,16384 --providers hwattn,sdpa_cudnn,sdpa_flash --rounds 2" BENCH_LIMIT=150 \
    FP8_ARGS="--sections bench --n 16384" FP8_LIMIT=50 TESTS="-n 8 tests/ops" TESTS_LIMIT=170
exec bash scripts/gpu_all.sh env hopper fp8exp bench fp8 tests
