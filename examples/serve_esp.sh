#!/usr/bin/env bash
# Serve a model with ESP over several instances and print how to query it.
#
#   examples/serve_esp.sh [MODEL] [--port N] [--instances N] [other `vllm serve` flags...]
#
# MODEL defaults to a tiny random local model (written once, nothing downloaded; its text is
# gibberish). Uses ./.venv (made by ./setup.sh) when it exists, else `vllm` and `python3`
# from PATH (e.g. after `source .venv/bin/activate`). Stop the server with Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=""
[ -x "$ROOT/.venv/bin/vllm" ] && BIN="$ROOT/.venv/bin/"
PYTHON="${BIN}python3"
[ -n "$BIN" ] || PYTHON=$(command -v python3)

MODEL="" PORT=8000 INSTANCES=2 NAME="" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --port=*) PORT=${1#*=}; shift ;;
    --instances) INSTANCES=$2; shift 2 ;;
    --instances=*) INSTANCES=${1#*=}; shift ;;
    --served-model-name) NAME=$2; EXTRA+=("$1" "$2"); shift 2 ;;
    -*) EXTRA+=("$1"); shift ;;
    *) if [ -z "$MODEL" ] && [ ${#EXTRA[@]} -eq 0 ]; then MODEL=$1; else EXTRA+=("$1"); fi
       shift ;;
  esac
done
DEFAULTS=()
if [ -z "$MODEL" ]; then
  MODEL=$("$PYTHON" -m vllm_esp.testing.tiny_model 2>/dev/null)
  DEFAULTS=(--dtype float32 --enforce-eager)  # the tiny model is float32; no compile wait
fi
NAME=${NAME:-$MODEL}  # vLLM serves the model under its path unless --served-model-name

echo "serving $MODEL on http://localhost:$PORT with $INSTANCES ESP instances"
echo "query it from another shell once 'Application startup complete' shows:"
echo "  curl -s http://localhost:$PORT/v1/completions -H 'Content-Type: application/json'" \
     "-d '{\"model\": \"$NAME\", \"prompt\": \"Hello\", \"max_tokens\": 16}'"
echo "  curl -s http://localhost:$PORT/metrics | grep '^vllm_esp:'"
exec "${BIN}vllm" serve "$MODEL" --port "$PORT" --executor esp --esp-instances "$INSTANCES" \
  ${DEFAULTS[@]+"${DEFAULTS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
