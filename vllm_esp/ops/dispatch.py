"""Which ESP attention backend runs, by device and KV cache layout: one choice per worker.

Every backend has the same two calls (``ops.keys`` describes the keys each row sees), each
returning ``(out [rows, Hq, D] float32, lse [Hq, rows] float32)``:

- ``ragged(q, k, v, segs, scale)``: keys in a contiguous tensor (a ring shard);
- ``paged(q, kv_cache, layout, segs, scale)``: keys in the paged cache, read through the layout;

and ``merge(outs [n, T, H, D], lses [n, H, T])`` for the n-way LSE merge.

==========  ==============================================  ====================================
backend     implementation                                  automatic choice
==========  ==============================================  ====================================
cpu         torch's CPU flash attention, tiled              CPU tensors
flash_attn  flash-attn varlen (paged in place), Triton for  CUDA with flash-attn importable
            what it cannot express
triton      the Triton staircase kernel for everything      CUDA without flash-attn
reference   the dense masked reference (tests, oracle)      never
==========  ==============================================  ====================================

Override with ``VLLM_ESP_OPS_BACKEND`` or ``select(..., override=...)``. A missing optional
package never breaks import; asking for it explicitly raises a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["SpanKernels", "select", "BACKENDS", "reference_kernels"]

BACKENDS = ("auto", "cpu", "flash_attn", "triton", "reference")


@dataclass(frozen=True, slots=True)
class SpanKernels:
    name: str
    ragged: Callable  # (q, k, v, segs, scale) -> (out, lse)
    paged: Callable  # (q, kv_cache, layout, segs, scale) -> (out, lse)
    merge: Callable  # (outs, lses) -> (out, lse)


def select(device: torch.device | str = "cpu", layout=None,
           override: str | None = None) -> SpanKernels:
    """The kernels for tensors on ``device`` and a KV ``layout`` (an ``ops.kv_cache`` one)."""
    from vllm_esp import envs
    from vllm_esp.ops import flash_attn_path, triton_kernels
    from vllm_esp.ops.kv_cache import CpuPagedKV
    from vllm_esp.ops.merge import merge_partials

    name = override or envs.VLLM_ESP_OPS_BACKEND or "auto"
    if name not in BACKENDS:
        raise ValueError(f"unknown ESP ops backend {name!r} (one of {', '.join(BACKENDS)})")
    device = torch.device(device)
    if name == "auto":
        if device.type == "cpu":
            name = "cpu"
        elif flash_attn_path.available():
            name = "flash_attn"
        else:
            name = "triton"
    if name == "reference":
        return reference_kernels()
    if name == "cpu":
        from vllm_esp.ops import cpu_attention

        return SpanKernels("cpu", cpu_attention.ragged_attention, cpu_attention.paged_attention,
                           merge_partials)
    if isinstance(layout, CpuPagedKV):
        raise ValueError(f"ESP ops backend {name!r} cannot read vLLM's CPU KV cache layout")
    if not triton_kernels.AVAILABLE:
        raise RuntimeError(f"ESP ops backend {name!r} needs triton, which is not importable")
    merge = triton_kernels.merge_partials_triton
    if name == "triton":
        return SpanKernels("triton", triton_kernels.ragged_attention_triton,
                           triton_kernels.paged_attention_triton, merge)
    if not flash_attn_path.available():
        raise RuntimeError("ESP ops backend 'flash_attn' requested but flash-attn is not "
                           "importable")

    def ragged(q, k, v, segs, scale):
        return flash_attn_path.ragged_attention_flash(
            q, k, v, segs, scale, triton_kernels.ragged_attention_triton)

    def paged(q, kv_cache, layout, segs, scale):
        return flash_attn_path.paged_attention_flash(
            q, kv_cache, layout, segs, scale, triton_kernels.paged_attention_triton)

    return SpanKernels("flash_attn", ragged, paged, merge)


def reference_kernels() -> SpanKernels:
    """The dense reference behind the same calls: the oracle the tests compare with (and a
    last resort). Quadratic memory: not for serving."""
    from vllm_esp.ops.merge import merge_partials
    from vllm_esp.ops.reference import segments_reference_paged, segments_reference_ragged

    return SpanKernels("reference", segments_reference_ragged, segments_reference_paged,
                       merge_partials)
