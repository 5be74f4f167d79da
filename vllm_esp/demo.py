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
import time


def run(args: argparse.Namespace) -> int:
    from vllm_esp.testing.server import VLLMServer
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = args.model or make_tiny_model()
    print(f"model: {model}")
    # --shutdown-timeout: on SIGTERM vLLM lets the engine and its workers exit by themselves
    # (its default 0 kills them at once, which the check below would report)
    serve_args = ["--executor", "esp", "--esp-instances", str(args.instances),
                  "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                  "--served-model-name", "tiny", "--shutdown-timeout", "30"]
    # INFO: the start-up progress below is read from the server's own log lines
    server = VLLMServer(model, serve_args, port=args.port, log_path=args.log,
                        env={"VLLM_LOGGING_LEVEL": "INFO"})
    print(f"starting: vllm serve {model} {' '.join(serve_args)}  (log: {server.log_path})")
    print("  (the first start takes a minute or two on a small CPU machine)", flush=True)
    server.start(on_log_line=StartupProgress())
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
        print("stopping the server", flush=True)
        leftovers = server.stop()
    if leftovers:
        print(f"server left {len(leftovers)} processes behind (killed)", file=sys.stderr)
        return 1
    terminated, killed = shutdown_signals(server.log_path)
    if killed:
        print(f"server stopped, but vLLM force-killed its processes: {killed[-1]} "
              f"(log: {server.log_path})", file=sys.stderr)
        return 1
    if terminated:
        print("server stopped: no process left behind, none killed; vLLM sent SIGTERM to "
              f"{len(terminated)} instance(s) whose workers were still running after its grace "
              "period (VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS), as it does to stock vLLM's CPU "
              "workers")
    else:
        print("server stopped cleanly: no process left behind, none signalled")
    return 0


# (pattern in a server log line, what the demo prints); {0}: the pattern's first group
_MILESTONES = [
    (r"Initializing a V1 LLM engine", "engine process started"),
    (r"\((?:Vllm)?Worker_ESP(\d+)\b.*Loading weights took", "instance {0}: model loaded"),
    (r"\((?:Vllm)?Worker\b.*Loading weights took", "instance 0: model loaded"),
    (r"ESP executor ready: (.*)", "ESP executor ready: {0}"),
    (r"(ESP KV pool: .*)", "{0}"),
    (r"Starting vLLM server on", "API server listening"),
]


class StartupProgress:
    """Prints the start-up milestones found in the server's log lines, with elapsed time."""

    def __init__(self):
        self.start = time.monotonic()

    def __call__(self, line: str) -> None:
        for pattern, text in _MILESTONES:
            m = re.search(pattern, line)
            if m:
                print(f"  [{time.monotonic() - self.start:5.1f} s] "
                      f"{text.format(*m.groups())}", flush=True)
                return


def shutdown_signals(log_path) -> tuple[list[str], list[str]]:
    """vLLM's shutdown warnings in the server log: (SIGTERMs sent to workers still running
    after the grace period, SIGKILLs / force kills of workers or the engine process)."""
    try:
        text = open(log_path, errors="replace").read()
    except OSError:
        return [], []
    warnings = [line.split("] ", 1)[-1].strip() for line in text.splitlines()
                if "[shutdown]" in line]
    killed = [w for w in warnings if re.search(r"sending SIGKILL|force killing", w)]
    terminated = [w for w in warnings if "sending SIGTERM" in w]
    return terminated, killed


def add_parser(subparsers) -> argparse.ArgumentParser:
    from vllm_esp.cli import HelpFormatter

    p = subparsers.add_parser("demo", help="serve a tiny local model with --executor esp and query it",
                              description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--instances", type=int, default=2, help="--esp-instances of the server")
    p.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    p.add_argument("--model", default=None, help="model path (default: a tiny random Llama)")
    p.add_argument("--log", default=None, help="server log file (default: /tmp/vllm-serve-PORT.log)")
    p.set_defaults(func=run)
    return p
