"""Symmetric int8 quantization of KV with one float32 scale per (token, head).

Swapped KV only has to survive a round trip to host memory, so a cheap scheme is enough: per
(token, head) the ``head_dim`` values are divided by ``scale = max|x| / 127`` and rounded. The
reconstruction error of every element is at most ``scale / 2 = max|x| / 254`` of its own
(token, head) row — one outlier token cannot spoil the precision of the others, which is why
the grouping is per token-head and not per block. Storage: 1 byte per element + 4 bytes per
``head_dim`` elements (for fp32 KV with head_dim 64: 3.8x smaller).
"""

from __future__ import annotations

import torch

QMAX = 127.0


def quantize_int8(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` -> (int8 values, float32 scales with ``dim`` kept as size 1)."""
    if not x.is_floating_point():
        raise ValueError(f"quantize_int8 needs a floating tensor, got {x.dtype}")
    xf = x.float()
    scale = xf.abs().amax(dim=dim, keepdim=True) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(xf / safe), -QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if q.dtype != torch.int8:
        raise ValueError(f"dequantize_int8 needs int8 values, got {q.dtype}")
    return (q.float() * scale).to(dtype)


def error_bound(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Per-element worst-case absolute error of a round trip (half a quantization step)."""
    return x.float().abs().amax(dim=dim, keepdim=True) / (2 * QMAX)
