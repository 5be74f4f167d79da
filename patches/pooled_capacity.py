"""Let ``max_model_len`` exceed one instance's KV pool when ESP pools several instances.

vLLM refuses to start when one worker's KV memory cannot hold a ``max_model_len`` request
(``kv_cache_utils._check_enough_kv_cache_memory``, called per worker from
``get_kv_cache_configs``). Under ESP a request's KV may spread over all instances, so the
limit is the sum of the pools. ``get_kv_cache_configs`` (where EngineCore sizes the caches)
is wrapped to read the number of pools from its ``vllm_config`` (the ESP executor's instances,
1 when the model's requests cannot be spread) and the check sees that many pools for the
duration of the call (a context variable; 1 outside it, so stock engines are unchanged).
"""

from __future__ import annotations

import contextvars
import functools

from vllm_esp_patches._patching import Patch

_pools: contextvars.ContextVar[int] = contextvars.ContextVar("esp_kv_pools", default=1)


def pool_count(vllm_config) -> int:
    """KV pools one request of this engine may use."""
    from vllm_esp.config import EXECUTOR_QUALNAME, ESPConfig
    from vllm_esp.integration.span_support import span_blockers

    backend = vllm_config.parallel_config.distributed_executor_backend
    name = backend if isinstance(backend, str) else \
        f"{getattr(backend, '__module__', '')}.{getattr(backend, '__qualname__', '')}"
    if name not in (EXECUTOR_QUALNAME, "esp"):
        return 1
    instances = ESPConfig.from_vllm_config(vllm_config).instances
    return 1 if instances < 2 or span_blockers(vllm_config) else instances


def _install(module) -> None:
    check = getattr(module, "_check_enough_kv_cache_memory", None)
    configs = getattr(module, "get_kv_cache_configs", None)
    if not callable(check) or not callable(configs):
        raise TypeError("vllm.v1.core.kv_cache_utils moved _check_enough_kv_cache_memory or "
                        "get_kv_cache_configs; the ESP pooled-capacity patch needs review")

    @functools.wraps(check)
    def pooled_check(available_memory, *args, **kwargs):
        return check(available_memory * _pools.get(), *args, **kwargs)

    @functools.wraps(configs)
    def pooled_configs(vllm_config, *args, **kwargs):
        token = _pools.set(pool_count(vllm_config))
        try:
            return configs(vllm_config, *args, **kwargs)
        finally:
            _pools.reset(token)

    module._check_enough_kv_cache_memory = pooled_check
    module.get_kv_cache_configs = pooled_configs
    import vllm.v1.engine.core as core  # it imported the name: patch its binding too

    if getattr(core, "get_kv_cache_configs", None) is configs:
        core.get_kv_cache_configs = pooled_configs


PATCH = Patch(
    name="pooled_capacity",
    target="vllm.v1.core.kv_cache_utils",
    install=_install,
    why="ESP: the longest request is bounded by the sum of the instances' KV pools",
)
