"""ESP attention operators: striped ring prefill, keep-range KV writes, distributed decode.

Importing this package does not import vLLM, Triton or flash-attn; those load lazily when a
CPU KV layout, a Triton kernel or the flash-attn path is first used.
"""

from vllm_esp.ops.dispatch import OpsBackends, select_backends
from vllm_esp.ops.distributed_decode import distributed_decode_attention
from vllm_esp.ops.hop_attention import stripe_hop_attention
from vllm_esp.ops.kv_cache import CpuPagedKV, FlashPagedKV, NhdPagedKV
from vllm_esp.ops.merge import merge_partials, merge_two
from vllm_esp.ops.paged_attention import paged_attention_with_lse
from vllm_esp.ops.plan import (
    DecodePlan,
    RingPrefillPlan,
    shard_slot_mapping,
    stripe_counts,
    stripe_len,
    striped_positions,
)
from vllm_esp.ops.reference import dense_causal_attention_varlen, masked_attention_with_lse
from vllm_esp.ops.ring_prefill import ring_prefill_attention

__all__ = [
    "CpuPagedKV",
    "FlashPagedKV",
    "DecodePlan",
    "NhdPagedKV",
    "OpsBackends",
    "RingPrefillPlan",
    "dense_causal_attention_varlen",
    "distributed_decode_attention",
    "masked_attention_with_lse",
    "merge_partials",
    "merge_two",
    "paged_attention_with_lse",
    "ring_prefill_attention",
    "select_backends",
    "shard_slot_mapping",
    "stripe_counts",
    "stripe_len",
    "stripe_hop_attention",
    "striped_positions",
]
