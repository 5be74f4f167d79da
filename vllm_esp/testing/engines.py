"""Engine construction shared by tests and benchmarks: one place for the comparison settings.

Stock and ESP engines in a golden comparison must differ only in the executor, so both are
built here from the same keyword set.
"""

from __future__ import annotations

import gc

MiB = 1 << 20

ENGINE_DEFAULTS = dict(
    dtype="float32",
    seed=0,
    enforce_eager=True,  # no torch.compile warm-up: ~20 s less per engine start on CPU
    max_model_len=4096,
    max_num_seqs=64,
    kv_cache_memory_bytes=64 * MiB,  # per worker; the tiny model needs 1 KiB per token
    enable_prefix_caching=False,
)


def make_engine(model: str, instances: int | None = None, **overrides):
    """A stock ``vllm.LLM`` (instances=None) or a ``vllm_esp.LLM`` with ESP instances."""
    kwargs = {**ENGINE_DEFAULTS, **overrides}
    if instances is None:
        from vllm import LLM

        return LLM(model, **kwargs)
    from vllm_esp import LLM

    return LLM(model, executor="esp", esp_instances=instances, **kwargs)


def close_engine(llm) -> None:
    """Stop the engine and its worker processes now (not at garbage collection)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()
