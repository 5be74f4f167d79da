"""KV swap between the paged cache and host memory, as a vLLM v1 KV connector.

Why a KV connector: the scheduler runs in the EngineCore process and the KV tensors live in
the worker processes; the connector API is vLLM's supported channel between the two. It has a
scheduler half and a worker half, and the metadata the scheduler half builds each step travels
inside ``SchedulerOutput`` to every worker (each TP rank swaps its own shard). Two of its hooks
fit swapping exactly:

* swap out — ``handle_preemptions(meta)`` runs at the very start of the worker's
  ``execute_model``, before any KV write of the step, i.e. before the blocks that the preemption
  freed can be overwritten by their next owner;
* swap in — ``get_num_new_matched_tokens`` tells the scheduler that the resumed request has
  ``n`` tokens of KV "externally cached", the scheduler allocates blocks for them and
  ``update_state_after_alloc`` names the blocks; the load is synchronous, so
  ``start_load_kv`` runs before the step's forward.

A ``worker_extension_cls`` RPC was the alternative, but the scheduler has no handle on the
executor, and the copy must be ordered with the step that reuses the blocks; the connector gives
both for free. Select it with

    kv_transfer_config={"kv_connector": "SwapConnector", "kv_role": "kv_both",
                        "kv_connector_module_path": "vllm_esp.scheduling.swap_connector",
                        "kv_connector_extra_config": {"quantize": false}}

(``quantize`` is only the default; the scheduler's ``esp.swap_quantize`` decides per swap.)

The scheduler (``AliseScheduler``) decides *whether* to swap (``request_swap_out``); without it
the connector is inert. Only single-KV-cache-group models (plain attention) are supported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from vllm_esp.scheduling.swap_store import HostKVStore

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)


@dataclass
class SwapMetadata(KVConnectorMetadata):
    """One step's swap work, scheduler -> workers. Block ids index the paged KV cache."""

    # (req_id, block ids of the request at preemption, tokens of valid KV, int8-quantize?)
    swap_out: list[tuple[str, list[int], int, bool]] = field(default_factory=list)
    # (req_id, destination block ids, index of the first stored block they receive)
    swap_in: list[tuple[str, list[int], int]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)  # stored copies no longer needed


def _cpu_token_maps(block_size: int, head_dim: int, dtype: torch.dtype):
    """Per-token K/V offsets inside a CPU cache slab, probed with vLLM's own write op."""
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from vllm_esp.ops.kv_cache import _probe_cpu_layout

    return _probe_cpu_layout(_get_attn_isa(dtype, block_size, head_dim), block_size, head_dim,
                             dtype)


def _flash_token_maps(block_size: int, head_dim: int, dtype: torch.dtype):
    """Per-token K/V offsets inside a slab of vLLM's FLASH_ATTN cache (``[num_blocks, Hkv,
    block_size, 2 * D]``: token t's K at ``[t, :D]``, its V at ``[t, D:]``)."""
    t = torch.arange(block_size).view(-1, 1) * 2 * head_dim
    d = torch.arange(head_dim).view(1, -1)
    return t + d, t + head_dim + d


def token_maps_for(kv_cache: torch.Tensor):
    """The K/V offset maps of the cache a worker registered: CPU_ATTN's probed layout on the
    CPU, FLASH_ATTN's on a GPU."""
    return _cpu_token_maps if kv_cache.device.type == "cpu" else _flash_token_maps


class SwapConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None):
        super().__init__(vllm_config, role, kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self.quantize = bool(extra.get("quantize", False))
        if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) != 1:
            raise ValueError("SwapConnector supports models with one KV cache group only")
        self.block_size = vllm_config.cache_config.block_size
        # scheduler side
        self._swapped: dict[str, int] = {}  # req_id -> tokens of KV held by the workers
        self._pending = SwapMetadata()
        self.stats = {"swap_out": 0, "swap_in": 0, "dropped": 0}
        # worker side
        self._kv_caches: dict[str, torch.Tensor] = {}
        self.store: HostKVStore | None = None

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # nothing is handed off when a request finishes

    # ---------------------------------------------------------------- scheduler side ------
    def request_swap_out(self, request: "Request", block_ids: list[int], num_tokens: int,
                         quantize: bool | None = None) -> None:
        """Called by the scheduler just before it frees ``request``'s blocks on preemption.

        ``quantize`` None = the connector's default (``kv_connector_extra_config.quantize``).
        """
        if num_tokens <= 0 or not block_ids:
            return
        n_blocks = -(-num_tokens // self.block_size)
        quantize = self.quantize if quantize is None else bool(quantize)
        self._pending.swap_out.append((request.request_id, list(block_ids[:n_blocks]),
                                       num_tokens, quantize))
        self._swapped[request.request_id] = num_tokens
        self.stats["swap_out"] += 1

    def swapped_tokens(self, req_id: str) -> int:
        return self._swapped.get(req_id, 0)

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        held = self._swapped.get(request.request_id, 0)
        # At least one token must be left to compute (it produces the next sample).
        held = min(held, request.num_tokens - 1)
        return max(held - num_computed_tokens, 0), False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        req_id = request.request_id
        if req_id not in self._swapped:
            return
        held = self._swapped.pop(req_id)
        if num_external_tokens <= 0:
            # Recovered otherwise (prefix cache) or recomputed: the copy is stale.
            self._pending.drop.append(req_id)
            self.stats["dropped"] += 1
            return
        start_tok = min(held, request.num_tokens - 1) - num_external_tokens
        first = start_tok // self.block_size
        last = -(-(start_tok + num_external_tokens) // self.block_size)
        block_ids = blocks.get_block_ids()[0][first:last]
        self._pending.swap_in.append((req_id, list(block_ids), first))
        self.stats["swap_in"] += 1

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta, self._pending = self._pending, SwapMetadata()
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        if self._swapped.pop(request.request_id, None) is not None:
            self._pending.drop.append(request.request_id)  # finished/aborted while swapped
        return False, None

    # ------------------------------------------------------------------- worker side ------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._kv_caches = dict(kv_caches)
        first = next(iter(kv_caches.values()), None)
        maps = token_maps_for(first) if first is not None else _cpu_token_maps
        self.store = HostKVStore(quantize=self.quantize, token_maps=maps)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        assert isinstance(kv_connector_metadata, SwapMetadata)
        for req_id, block_ids, num_tokens, quantize in kv_connector_metadata.swap_out:
            self.store.swap_out(req_id, self._kv_caches, block_ids, num_tokens, quantize)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, SwapMetadata)
        for req_id, block_ids, first in meta.swap_in:
            self.store.swap_in(req_id, self._kv_caches, block_ids, first)
        for req_id in meta.drop:
            self.store.drop(req_id)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return
