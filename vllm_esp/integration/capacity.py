"""The start-up line that states what the pooled KV cache of the ESP instances holds.

vLLM logs one instance's capacity ("CPU KV cache size: 65,536 tokens, Maximum concurrency for
2,048 tokens per request: 0.57x"): under ESP that line reads as if long requests did not fit,
while a request may spread over every instance's pool. This line gives the pooled numbers,
and says so when ``--executor esp`` runs a single instance (the default).
"""

from __future__ import annotations


def pool_summary(instance_tokens: list[int], tp: int, max_model_len: int) -> str:
    """One log line; ``instance_tokens[i]`` = tokens instance i's KV pool holds."""
    total = sum(instance_tokens)
    concurrency = total / max_model_len if max_model_len else 0.0
    tail = (f"maximum concurrency for {max_model_len:,} tokens per request: "
            f"{concurrency:.2f}x")
    n = len(instance_tokens)
    if n == 1:
        return (f"ESP KV pool: 1 instance x TP {tp}, {total:,} tokens; {tail} "
                "(--executor esp without --esp-instances N runs one instance)")
    if len(set(instance_tokens)) == 1:
        sizes = f"{n} instances x {instance_tokens[0]:,} tokens"
    else:
        sizes = " + ".join(f"{t:,}" for t in instance_tokens) + " tokens"
    return (f"ESP KV pool: {sizes} = {total:,} tokens pooled (TP {tp}); a request of up to "
            f"max_model_len {max_model_len:,} tokens spreads over instances when it outgrows "
            f"one; {tail} over the pool (vLLM's 'Maximum concurrency' line counts one "
            f"instance)")


def check_pooled_capacity(vllm_config) -> None:
    """One-line ValueError, before any worker starts, when ``max_model_len`` exceeds what the
    instances' pools hold together (CPU build, pool size known up front: ``--kv-cache-memory-
    bytes``, ``VLLM_CPU_KVCACHE_SPACE`` or the ESP default). vLLM would find out only in the
    engine process, after the workers started, and print three tracebacks. On a GPU the pool
    size comes from memory profiling in the workers: vLLM's own check stays in charge there.
    """
    import os

    from vllm.platforms import current_platform

    from vllm_esp import envs
    from vllm_esp.config import ESPConfig
    from vllm_esp.integration.span_support import span_blockers

    if not current_platform.is_cpu():
        return
    esp = ESPConfig.from_vllm_config(vllm_config)
    mc, cc, pc = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
    if span_blockers(vllm_config):
        return  # windows / several KV groups: vLLM's own per-layer accounting decides
    if cc.kv_cache_memory_bytes is not None:
        pool_bytes = cc.kv_cache_memory_bytes
    elif os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        pool_bytes = int(float(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * (1 << 30))
    else:
        pool_bytes = int(float(envs.VLLM_ESP_DEFAULT_CPU_KVCACHE_GIB) * (1 << 30))
    token_bytes = 2 * mc.get_num_layers(pc) * mc.get_num_kv_heads(pc) * mc.get_head_size() \
        * mc.dtype.itemsize
    bs = cc.block_size or 128
    need = -(-mc.max_model_len // bs) * bs * token_bytes
    pools = esp.instances if esp.instances > 1 else 1
    if need > pools * pool_bytes:
        held = pools * pool_bytes // (bs * token_bytes) * bs
        raise ValueError(
            f"--max-model-len {mc.max_model_len:,} needs {need / (1 << 20):,.1f} MiB of KV "
            f"cache per worker group, more than the {pools} instance pool(s) of "
            f"{pool_bytes / (1 << 20):,.1f} MiB hold ({held:,} tokens); lower --max-model-len, "
            f"or give each worker more KV memory (--kv-cache-memory-bytes) or more instances")
