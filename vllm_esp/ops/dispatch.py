"""Backend selection for the ESP attention ops: automatic, with an override.

Three op families, each with interchangeable implementations of one signature:

==============  ================================  ======================================
family          implementations                   automatic choice
==============  ================================  ======================================
hop (prefill)   "torch", "flash_attn"             flash_attn if importable on CUDA
partial decode  "torch", "triton"                 triton on CUDA with the NHD layout
merge           "torch", "triton", "vllm"         triton on CUDA, else torch
==============  ================================  ======================================

Override per call (``backend=...``) or globally with ``VLLM_ESP_OPS_BACKEND`` (one name, used
for every family that has it). A missing optional package never breaks import: it only
removes that choice, and asking for it explicitly raises a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["OpsBackends", "select_backends", "vllm_merge_two"]

ENV_VAR = "VLLM_ESP_OPS_BACKEND"


@dataclass(slots=True)
class OpsBackends:
    """The chosen implementation names and callables for one device/layout."""

    hop: str  # ring-prefill hop backend name for ``stripe_hop_attention``
    partial: Callable  # ``paged_attention_with_lse`` signature
    partial_name: str
    merge: Callable  # ``merge_partials`` signature
    merge_name: str
    merge_two: Callable  # ``merge_two`` signature (ring prefill's online step)


def vllm_merge_two(out_a, lse_a, out_b, lse_b):
    """``merge_two`` through vLLM's ``merge_attn_states`` (its CPU path is torch)."""
    from vllm.v1.attention.ops.merge_attn_states import merge_attn_states

    out = torch.empty_like(out_a)
    lse = torch.empty_like(lse_a, dtype=torch.float32)
    merge_attn_states(out, out_a, lse_a.float(), out_b, lse_b.float(), lse)
    return out, lse


def _pairwise(merge_partials_fn):
    def merge_two(out_a, lse_a, out_b, lse_b):
        return merge_partials_fn(torch.stack([out_a, out_b]),
                                 torch.stack([lse_a.float(), lse_b.float()]))
    return merge_two


def select_backends(device: torch.device | str = "cpu", layout=None,
                    override: str | None = None) -> OpsBackends:
    """Pick implementations for ``device`` and a KV ``layout`` object (or None)."""
    from vllm_esp.ops import flash_attn_path, triton_kernels
    from vllm_esp.ops.kv_cache import NhdPagedKV
    from vllm_esp.ops.merge import merge_partials, merge_two
    from vllm_esp.ops.paged_attention import paged_attention_with_lse

    device = torch.device(device)
    from vllm_esp import envs

    override = override or envs.VLLM_ESP_OPS_BACKEND
    cuda = device.type == "cuda"
    if override not in (None, "auto", "torch", "triton", "flash_attn", "vllm"):
        raise ValueError(f"unknown ESP ops backend {override!r}")
    if override == "triton" and not triton_kernels.AVAILABLE:
        raise RuntimeError("backend 'triton' requested but triton is not importable")
    if override == "flash_attn" and not flash_attn_path.available():
        raise RuntimeError("backend 'flash_attn' requested but flash-attn is not importable")

    hop = "flash_attn" if (override == "flash_attn" or
                           (override in (None, "auto") and cuda and flash_attn_path.available())
                           ) else "torch"
    use_triton = override == "triton" or (
        override in (None, "auto") and cuda and triton_kernels.AVAILABLE)
    if use_triton and isinstance(layout, NhdPagedKV):
        partial, partial_name = triton_kernels.paged_attention_with_lse_triton, "triton"
    else:
        partial, partial_name = paged_attention_with_lse, "torch"
    if use_triton:
        merge, merge_name = triton_kernels.merge_partials_triton, "triton"
        m2 = _pairwise(merge)
    elif override == "vllm":
        merge, merge_name, m2 = merge_partials, "vllm", vllm_merge_two
    else:
        merge, merge_name, m2 = merge_partials, "torch", merge_two
    return OpsBackends(hop=hop, partial=partial, partial_name=partial_name,
                       merge=merge, merge_name=merge_name, merge_two=m2)
