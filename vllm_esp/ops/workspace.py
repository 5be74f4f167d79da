"""How much transient memory ESP attention may take beyond vLLM's own activations.

The ESP runner holds this many bytes while vLLM's profile run measures the worker's peak, so
the KV cache sized afterwards leaves room for it. The bound does not depend on any context
length: it is set by the step's token budget (ring shards in flight and float32
accumulators are per row of the step) plus the kernels' fixed tiles.
"""

from __future__ import annotations

from vllm_esp.ops import cpu_attention

__all__ = ["reserve_bytes"]


def reserve_bytes(max_tokens: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                  dtype_bytes: int) -> int:
    """Bytes: two ring shards (the one attended, the one arriving) of K and V for every row
    of the step, three float32 (out, lse) accumulators of the step's rows, and the kernels'
    tiles (``cpu_attention.workspace_bytes``; the device kernels need less)."""
    shards = 2 * 2 * max_tokens * num_kv_heads * head_dim * dtype_bytes
    accumulators = 3 * max_tokens * num_q_heads * (head_dim + 1) * 4
    tiles = cpu_attention.workspace_bytes(num_q_heads, num_kv_heads, head_dim, dtype_bytes)
    return shards + accumulators + tiles
