"""The VLLM_ESP_* environment variables, in one table, read lazily on attribute access."""

from __future__ import annotations

import os
from typing import Any, Callable

_ENV: dict[str, Callable[[], Any]] = {
    # Log the per-iteration plan (instances, requests, tokens) at INFO.
    "VLLM_ESP_DEBUG_PLAN": lambda: os.environ.get("VLLM_ESP_DEBUG_PLAN", "0") == "1",
    # Workers allowed per CPU core before start-up is refused (CPU build only).
    "VLLM_ESP_CPU_OVERSUBSCRIBE": lambda: int(os.environ.get("VLLM_ESP_CPU_OVERSUBSCRIBE", "2")),
    # GiB of KV cache per CPU worker used when the user set neither VLLM_CPU_KVCACHE_SPACE
    # nor --kv-cache-memory-bytes (vLLM's own default wants 92% of the NUMA node and
    # refuses to start on small machines).
    "VLLM_ESP_DEFAULT_CPU_KVCACHE_GIB": lambda: os.environ.get(
        "VLLM_ESP_DEFAULT_CPU_KVCACHE_GIB", "1"
    ),
    # Force the ESP attention backend (ops.dispatch): auto | cpu | flash_attn | triton | reference.
    "VLLM_ESP_OPS_BACKEND": lambda: os.environ.get("VLLM_ESP_OPS_BACKEND") or None,
    # Set by the ESP executor in each instance's workers (its index); names them in logs.
    "VLLM_ESP_INSTANCE": lambda: os.environ.get("VLLM_ESP_INSTANCE") or None,
    # Skip the vLLM version guard of patches/ (at your own risk).
    "VLLM_ESP_SKIP_VERSION_CHECK": lambda: os.environ.get("VLLM_ESP_SKIP_VERSION_CHECK", "0")
    == "1",
}


def __getattr__(name: str) -> Any:
    if name in _ENV:
        return _ENV[name]()
    raise AttributeError(f"module 'vllm_esp.envs' has no attribute {name!r}")


def __dir__():
    return list(_ENV)
