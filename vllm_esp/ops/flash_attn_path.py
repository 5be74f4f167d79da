"""GPU backend of ESP attention through flash-attn's varlen kernel (``return_softmax_lse``).

flash-attn's causal mask is aligned to the bottom right, so two kinds of segment (``ops.keys``)
are exactly what it computes, batched over all segments of a call:

- paged sources (decode partials, an earlier chunk, the asker's own chunk): ``full`` segments
  with ``causal=False``, ``causal`` segments with ``causal=True``; the keys are read in place
  from the paged FLASH cache through the block table (``seqused_k``), never gathered;
- a ring hop whose staircase climbs one key per row (equal stripes, LoongServe's ``t % k``):
  after its rows that see nothing, the segment is a bottom-right causal block over the
  shard's contiguous keys (``cu_seqlens_k``).

Everything else (weighted stripes, and float32 models: flash-attn computes in half precision
only) goes to the Triton kernel (``triton_kernels``), which takes any staircase. The kernel is looked up lazily: vLLM's bundled ``vllm.vllm_flash_attn`` (with
vLLM's FA version choice), then the ``flash_attn`` package; a missing or broken package only
makes ``available()`` false. Tests stand a torch implementation of flash-attn's documented
semantics in for the kernel (``set_override``) to check the packing logic on the CPU.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from vllm_esp.ops.keys import KeySegments

__all__ = ["available", "get_varlen_func", "set_override", "is_diagonal",
           "ragged_attention_flash", "paged_attention_flash"]

_OVERRIDE: Callable | None = None


@functools.lru_cache(maxsize=1)
def _lookup() -> Callable | None:
    if not torch.cuda.is_available():
        return None
    try:
        from vllm.v1.attention.backends.fa_utils import get_flash_attn_version
        from vllm.vllm_flash_attn import flash_attn_varlen_func

        version = get_flash_attn_version()
        return functools.partial(flash_attn_varlen_func, fa_version=version) \
            if version else flash_attn_varlen_func
    except Exception:  # ImportError, missing CUDA libs, ABI mismatch: all mean "absent"
        pass
    try:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func
    except Exception:
        return None


def set_override(fn: Callable | None) -> None:
    """Stand ``fn`` (flash-attn's signature) in for the kernel; None restores the lookup."""
    global _OVERRIDE
    _OVERRIDE = fn


def get_varlen_func() -> Callable | None:
    return _OVERRIDE if _OVERRIDE is not None else _lookup()


def available() -> bool:
    return get_varlen_func() is not None


def is_diagonal(limits: np.ndarray) -> bool:
    """After its leading zeros, does the staircase climb exactly one key per row? (Then the
    rows that see something are a bottom-right causal block.)"""
    nz = limits[limits > 0]
    return len(nz) > 0 and bool((np.diff(nz) == 1).all())


def _rows_index(segs: KeySegments, which: list[int], skip: list[int]) -> torch.Tensor:
    """Row indices (into q) of segments ``which``, each from its ``skip``-th row on."""
    idx = [np.arange(segs.segments[i].q_start + s, segs.segments[i].q_end)
           for i, s in zip(which, skip)]
    flat = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(flat.astype(np.int64)).to(segs.device)


def _cu(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32,
                        device=device)


def _empty(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros(q.shape[0], q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=q.device)
    return out, lse


def _scatter(out, lse, rows: torch.Tensor, res) -> None:
    """Put a packed call's ``(out [T, H, D], lse [H, T])`` back at ``rows``."""
    out[rows] = res[0].float()
    lse[:, rows] = res[1].float()


def _step_plan(segs: KeySegments, name: str, build):
    key = ("flash", name)
    if key not in segs._cache:
        segs._cache[key] = build()
    return segs._cache[key]


def ragged_attention_flash(q, k, v, segs: KeySegments, scale: float, fallback: Callable):
    """Diagonal ring-hop segments through flash-attn (bottom-right causal over the shard's
    keys); the rest through ``fallback`` (the Triton kernel). Packing is built once per step."""
    if q.dtype == torch.float32:  # flash-attn computes in half precision only
        return fallback(q, k, v, segs, scale)
    out, lse = _empty(q)
    fn = get_varlen_func()

    def build():
        diag, skip, lens_q, k_idx, lens_k = [], [], [], [], []
        for i, s in enumerate(segs):
            if not s.num_keys or not is_diagonal(s.limits):
                continue
            nz = int((s.limits > 0).sum())
            tail = s.limits[s.num_rows - nz:]
            diag.append(i)
            skip.append(s.num_rows - nz)
            lens_q.append(nz)
            lens_k.append(int(tail[-1]))
            k_idx.append(np.arange(s.k_start, s.k_start + int(tail[-1])))
        rest = KeySegments([s for i, s in enumerate(segs) if i not in set(diag) and s.num_keys],
                           segs.device)
        kk = torch.from_numpy(np.concatenate(k_idx).astype(np.int64)).to(segs.device) \
            if k_idx else None
        return (diag, _rows_index(segs, diag, skip), _cu(lens_q, segs.device),
                _cu(lens_k, segs.device), max(lens_q, default=0), max(lens_k, default=0),
                kk, rest)

    diag, rows, cu_q, cu_k, max_q, max_k, kk, rest = _step_plan(segs, "ragged", build)
    if diag:
        res = fn(q[rows], k[kk], v[kk], max_seqlen_q=max_q, cu_seqlens_q=cu_q,
                 max_seqlen_k=max_k, cu_seqlens_k=cu_k, softmax_scale=scale, causal=True,
                 return_softmax_lse=True)
        _scatter(out, lse, rows, res)
    if len(rest):
        o, l = fallback(q, k, v, rest, scale)
        rows_rest = _rows_index(rest, list(range(len(rest))), [0] * len(rest))
        out[rows_rest], lse[:, rows_rest] = o[rows_rest], l[:, rows_rest]
    return out, lse


def paged_attention_flash(q, kv_cache, layout, segs: KeySegments, scale: float,
                          fallback: Callable):
    """``full`` and ``causal`` paged segments through flash-attn (one call each, keys read in
    place through the block table); any other segment through ``fallback``."""
    if q.dtype == torch.float32:  # flash-attn computes in half precision only
        return fallback(q, kv_cache, layout, segs, scale)
    out, lse = _empty(q)
    fn = get_varlen_func()
    kc, vc = layout.kv_views(kv_cache)

    def build():
        calls = []
        for kind in ("full", "causal"):
            which = [i for i, s in enumerate(segs) if s.kind == kind and s.num_keys]
            if not which:
                continue
            lens = [segs.segments[i].num_rows for i in which]
            seqused = torch.tensor([segs.segments[i].num_keys for i in which],
                                   dtype=torch.int32, device=segs.device)
            calls.append((kind == "causal", _rows_index(segs, which, [0] * len(which)),
                          _cu(lens, segs.device), max(lens), seqused,
                          int(seqused.max()), segs.block_table()[which]))
        rest = KeySegments([s for s in segs if s.kind not in ("full", "causal") and s.num_keys],
                           segs.device)
        return calls, rest

    calls, rest = _step_plan(segs, "paged", build)
    for is_causal, rows, cu_q, max_q, seqused, max_k, table in calls:
        res = fn(q[rows], kc, vc, max_seqlen_q=max_q, cu_seqlens_q=cu_q, max_seqlen_k=max_k,
                 seqused_k=seqused, block_table=table, softmax_scale=scale, causal=is_causal,
                 return_softmax_lse=True)
        _scatter(out, lse, rows, res)
    if len(rest):
        o, l = fallback(q, kv_cache, layout, rest, scale)
        rows_rest = _rows_index(rest, list(range(len(rest))), [0] * len(rest))
        out[rows_rest], lse[:, rows_rest] = o[rows_rest], l[:, rows_rest]
    return out, lse
