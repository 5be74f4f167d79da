"""Let ``max_model_len`` exceed one instance's KV pool when ESP pools several instances.

vLLM refuses to start when one worker's KV memory cannot hold a ``max_model_len`` request
(``kv_cache_utils._check_enough_kv_cache_memory``, called per worker from
``get_kv_cache_configs``). Under ESP a request's KV may spread over all instances, so the
limit is the sum of the pools: the ESP executor sets the pool count (in the EngineCore
process, before the KV caches are sized) and the check sees that many pools. With the count
at 1 (stock vLLM, a single ESP instance) the check is unchanged.
"""

from __future__ import annotations

import functools

from vllm_esp_patches._patching import Patch

_pools = 1  # instances whose KV pools one request may use


def set_pool_count(n: int) -> None:
    global _pools
    _pools = max(1, int(n))


def _install(module) -> None:
    original = getattr(module, "_check_enough_kv_cache_memory", None)
    if original is None or not callable(original):
        raise TypeError("vllm.v1.core.kv_cache_utils._check_enough_kv_cache_memory moved; "
                        "the ESP pooled-capacity patch needs review")

    @functools.wraps(original)
    def check(available_memory, *args, **kwargs):
        return original(available_memory * _pools, *args, **kwargs)

    module._check_enough_kv_cache_memory = check


PATCH = Patch(
    name="pooled_capacity",
    target="vllm.v1.core.kv_cache_utils",
    install=_install,
    why="ESP: the longest request is bounded by the sum of the instances' KV pools",
)
