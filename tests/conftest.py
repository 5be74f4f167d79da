"""Shared test fixtures: tiny local models (written once per session) and engine defaults."""

from __future__ import annotations

import os

import pytest

# Engines in tests size their KV pools explicitly (kv_cache_memory_bytes); the CPU build's
# legacy VLLM_CPU_KVCACHE_SPACE would override that, so it must not leak in from the shell.
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Paths of tiny float32 Llama- and Qwen2-shaped checkpoints (weights scaled x3)."""
    from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "llama": make_tiny_model(root / "llama", TinyModelSpec(arch="llama")),
        "qwen2": make_tiny_model(root / "qwen2", TinyModelSpec(arch="qwen2", seed=1)),
    }
