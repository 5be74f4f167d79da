#!/usr/bin/env bash
# Serve a model with ESP over 2 instances (default: a tiny random local model), then query it:
#   curl localhost:8000/v1/completions -H 'Content-Type: application/json' \
#        -d '{"model": "MODEL", "prompt": "Hello", "max_tokens": 16}'
#   curl -s localhost:8000/metrics | grep vllm_esp:
set -euo pipefail
MODEL=${1:-$(python -m vllm_esp.testing.tiny_model)}
exec vllm serve "$MODEL" --executor esp --esp-instances 2 --dtype float32 --enforce-eager
