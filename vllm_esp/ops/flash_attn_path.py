"""flash-attn varlen with ``return_softmax_lse``: the GPU path for ring-prefill hops.

Looked up lazily: vLLM's bundled ``vllm.vllm_flash_attn`` first, then the ``flash_attn``
package. Nothing is imported at module load, and a missing or broken package only makes
``available()`` return False.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

__all__ = ["available", "get_varlen_func", "varlen_causal_with_lse"]

_OVERRIDE: Callable | None = None  # set by tests to stand in for flash-attn on CPU


@functools.lru_cache(maxsize=1)
def _lookup() -> Callable | None:
    if not torch.cuda.is_available():
        return None
    for mod in ("vllm.vllm_flash_attn", "flash_attn"):
        try:
            m = __import__(mod, fromlist=["flash_attn_varlen_func"])
            return getattr(m, "flash_attn_varlen_func")
        except Exception:  # ImportError, missing CUDA libs, ABI mismatch: all mean "absent"
            continue
    return None


def get_varlen_func() -> Callable | None:
    return _OVERRIDE if _OVERRIDE is not None else _lookup()


def available() -> bool:
    return get_varlen_func() is not None


def varlen_causal_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: list[int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square causal blocks (``lens[i]`` queries == keys) packed; ``(out, lse [Hq, T])``.

    Square blocks make flash-attn's bottom-right causal alignment equal to the top-left one.
    """
    fn = get_varlen_func()
    if fn is None:
        raise RuntimeError("flash-attn varlen is not available")
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=q.device)
    cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0).to(q.device)
    res = fn(
        q, k, v,
        cu_seqlens_q=cu, cu_seqlens_k=cu,
        max_seqlen_q=max(lens), max_seqlen_k=max(lens),
        softmax_scale=scale, causal=True, return_softmax_lse=True,
    )
    out, lse = res[0], res[1]
    t, h = q.shape[0], q.shape[1]
    if t != h and tuple(lse.shape) == (t, h):  # flash-attn 2 varlen gives [H, T]; tolerate [T, H]
        lse = lse.transpose(0, 1)
    return out, lse
