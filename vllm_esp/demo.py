"""``vllm-esp demo``: the whole product in one command, on an embedded tiny model.

Writes a tiny random Llama checkpoint (no download), starts
``vllm serve <it> --executor esp --esp-instances 2``, sends one completion, one chat request
and one long completion spread over all instances (``vllm_xargs: {"esp_instances": N}``)
through the OpenAI-compatible API, prints the answers and the ESP metrics, and stops the
server (checking that no process is left behind). The model is random, so the
text is gibberish; the point is the path a real deployment takes.
"""

from __future__ import annotations

import argparse
import re
import sys


def run(args: argparse.Namespace) -> int:
    from vllm_esp.testing.server import VLLMServer
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = args.model or make_tiny_model()
    print(f"model: {model}")
    serve_args = ["--executor", "esp", "--esp-instances", str(args.instances),
                  "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                  "--served-model-name", "tiny"]
    server = VLLMServer(model, serve_args, port=args.port, log_path=args.log)
    print(f"starting: vllm serve {model} {' '.join(serve_args)}  (log: {server.log_path})")
    server.start()
    try:
        status, completion = server.post("/v1/completions", {
            "model": "tiny", "prompt": "Elastic sequence parallelism is", "max_tokens": 16,
            "temperature": 0})
        if status != 200:
            raise RuntimeError(f"completion failed ({status}): {completion}")
        print(f"completion: {completion['choices'][0]['text']!r}")
        status, chat = server.post("/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "Hello, how are you?"}],
            "max_tokens": 16, "temperature": 0})
        if status != 200:
            raise RuntimeError(f"chat failed ({status}): {chat}")
        print(f"chat: {chat['choices'][0]['message']['content']!r}")
        status, spread = server.post("/v1/completions", {
            "model": "tiny", "prompt": "Long context serving needs memory. " * 60,
            "max_tokens": 16, "temperature": 0,
            "vllm_xargs": {"esp_instances": args.instances}})
        if status != 200:
            raise RuntimeError(f"spread completion failed ({status}): {spread}")
        print(f"spread over {args.instances} instances: {spread['choices'][0]['text']!r}")
        server.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
        for line in server.get("/metrics").splitlines():  # (stats lag the tokens by a step)
            if re.match(r"vllm_esp:(kv_cache_total_blocks|num_requests_dispatched_total|"
                        r"num_spanning_requests_total|num_parallel_prefills_total|"
                        r"num_ring_prefills_total|esp_bytes_sent_total)\{", line):
                print(f"metric: {line}")
    finally:
        leftovers = server.stop()
    if leftovers:
        print(f"server left {len(leftovers)} processes behind (killed)", file=sys.stderr)
        return 1
    print("server stopped cleanly")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="serve a tiny local model with --executor esp and query it")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--model", default=None, help="model path (default: a tiny random Llama)")
    p.add_argument("--log", default=None, help="server log file")
    p.set_defaults(func=run)
    return p
