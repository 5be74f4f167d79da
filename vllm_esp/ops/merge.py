"""Log-sum-exp merge of partial attention results (torch reference).

Partial attention over disjoint key sets K_1..K_n gives (o_i, lse_i). The attention over their
union is ``o = sum_i w_i o_i`` with ``w_i = exp(lse_i - lse)`` and
``lse = log sum_i exp(lse_i)``. We subtract ``m = max_i lse_i`` first for stability.

Invariants (shared by every backend, the Triton kernel and vLLM's ``merge_attn_states``):
- A partial with no keys has ``lse = -inf`` and any finite (normally zero) output; it gets
  weight 0. If all partials are empty the result is ``o = 0, lse = -inf`` (never NaN).
- ``+inf`` LSE is treated as ``-inf`` (vLLM's convention for "no context").
- Shapes follow vLLM: outputs ``[tokens, heads, head_dim]``, LSE ``[heads, tokens]`` in
  float32 natural log. Merging is done in float32 and cast back to the output dtype.
"""

from __future__ import annotations

import torch

__all__ = ["merge_two", "merge_partials"]


def _clean(lse: torch.Tensor) -> torch.Tensor:
    lse = lse.float()
    return torch.where(torch.isposinf(lse), torch.full_like(lse, float("-inf")), lse)


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``n`` partials.

    Args:
        outs: ``[n, tokens, heads, head_dim]``.
        lses: ``[n, heads, tokens]`` (any float dtype; computed in float32).
    Returns:
        ``(out [tokens, heads, head_dim] in outs.dtype, lse [heads, tokens] float32)``.
    """
    lses = _clean(lses)
    m = lses.amax(dim=0)  # [H, T]
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w = torch.exp(lses - m_safe)  # [n, H, T]; exp(-inf) = 0 for empty partials
    denom = w.sum(dim=0)  # [H, T]
    empty = denom == 0
    scale = w / torch.where(empty, torch.ones_like(denom), denom)
    out = (outs.float() * scale.permute(0, 2, 1).unsqueeze(-1)).sum(dim=0)
    lse = torch.where(empty, torch.full_like(m, float("-inf")), torch.log(denom) + m_safe)
    return out.to(outs.dtype), lse


def merge_two(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partials (``[T, H, D]`` outputs, ``[H, T]`` LSEs); the online-softmax step."""
    return merge_partials(torch.stack([out_a, out_b]), torch.stack([lse_a.float(), lse_b.float()]))
