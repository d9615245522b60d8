#!/usr/bin/env bash
# Set up a virtual environment in .venv (once) and run the demo, the tests, or any hwattn command.
#   ./run.sh demo            the main job: kernel vs reference, memory of naive vs tiled attention
#   ./run.sh test [ARGS]     the test suite (CPU: every Triton kernel runs in the interpreter)
#   ./run.sh hwattn ARGS     any CLI command, e.g. ./run.sh hwattn bench --quick
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    if "$PY" -c "import torch, triton" 2>/dev/null; then
        # A machine that already has torch + triton (e.g. a CUDA image): reuse them, download nothing big.
        "$PY" -m venv --system-site-packages .venv
    else
        "$PY" -m venv .venv
        # torch==2.13.0 first and alone: on CPU-only machines of this kind it is the local CPU wheel;
        # letting the resolver pick torch freely could pull a multi-GB CUDA build.
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q "torch==2.13.0"
    fi
    .venv/bin/python -m pip install -q -e ".[test]"
fi

# No GPU: run the Triton kernels through the interpreter (must be set before triton is imported).
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export TRITON_INTERPRET=1
fi

cmd=${1:-demo}
shift || true
case "$cmd" in
    demo) exec .venv/bin/hwattn demo "$@" ;;
    test) exec .venv/bin/python -m pytest -n "${HWATTN_TEST_WORKERS:-2}" -q tests "$@" ;;
    hwattn) exec .venv/bin/hwattn "$@" ;;
    *) echo "usage: ./run.sh {demo|test|hwattn ...}" >&2; exit 2 ;;
esac
