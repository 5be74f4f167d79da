"""ESP attention: the one stack the engine runs (no vLLM import).

- ``plan``: the per-step plan (ring prefills, span queries) the scheduler side builds;
- ``step``: one instance's view of it as index tensors, built once per step;
- ``keys``: which keys each query row sees (the staircase every kernel takes);
- kernels by device and layout, chosen by ``dispatch.select``: ``cpu_attention`` (torch's
  CPU flash attention, tiled), ``flash_attn_path`` (flash-attn varlen, paged in place) and
  ``triton_kernels`` (any staircase, split along the keys); ``reference`` is the dense oracle;
- ``ring_prefill.ring_layer`` and ``span_exchange.span_layer``: one layer of each algorithm;
- ``kv_cache``: the paged layouts (vLLM's CPU_ATTN and FLASH_ATTN caches); ``merge``: LSE merge.

Importing this package does not import vLLM, Triton or flash-attn; they load lazily.
"""

from vllm_esp.ops.dispatch import SpanKernels, select
from vllm_esp.ops.keys import KeySegments, Segment
from vllm_esp.ops.kv_cache import CpuPagedKV, FlashPagedKV, NhdPagedKV
from vllm_esp.ops.merge import merge_partials, merge_two
from vllm_esp.ops.plan import (
    ESPStepPlan,
    PeerChunk,
    RingMember,
    RingPrefill,
    SpanAttention,
    ring_groups,
    stripes,
)
from vllm_esp.ops.reference import dense_causal_attention_varlen, masked_attention_with_lse
from vllm_esp.ops.ring_prefill import ring_layer
from vllm_esp.ops.span_exchange import span_layer
from vllm_esp.ops.step import StepTensors

__all__ = [
    "CpuPagedKV",
    "ESPStepPlan",
    "FlashPagedKV",
    "KeySegments",
    "NhdPagedKV",
    "PeerChunk",
    "RingMember",
    "RingPrefill",
    "Segment",
    "SpanAttention",
    "SpanKernels",
    "StepTensors",
    "dense_causal_attention_varlen",
    "masked_attention_with_lse",
    "merge_partials",
    "merge_two",
    "ring_groups",
    "ring_layer",
    "select",
    "span_layer",
    "stripes",
]
