"""What a static tensor-parallel group of ``k`` instances costs: the baselines' TP=k·tp engine.

A profile describes one *instance* (one TP group of ``tp`` GPUs) and ESP groups of ``k``
instances (sequence parallel: every decode master reads all weights). A static TP group that
spans ``k`` instances is a different machine: it is one instance with ``k`` times the GPUs.
Derived from the ``k = 1`` coefficients ``(A, B, C)`` (prefill) and ``(D, E, F)`` (decode):

* prefill: ``A + (B·S1 + C·S2)/k`` — linear layers and attention heads split over the group;
* decode: ``D_fixed + (D − D_fixed)/k + E·b/k + F·ctx/k`` — the weight read (``D − D_fixed``)
  and the per-request compute (``E``) are split over ``k`` times the GPUs, as are the KV reads;
  ``D_fixed`` (launch and scheduling overhead, seconds) is not;
* plus the all-reduces the group adds: ``n_calls`` per forward pass (2 per layer), each a ring
  all-reduce of ``tokens × act_bytes`` over ``g = k·tp`` GPUs costing
  ``lat(g) + 2(g−1)/g · bytes / bw`` with ``lat(g) = base + step·(g−1)``. One instance's profile
  already holds its own ``tp``-GPU all-reduces (measured profiles do; estimated ones ignore
  them for every system alike), so a group is charged the difference ``AR(k·tp) − AR(tp)``.

Without ``TPGroupTerms`` in the profile the split is ideal and no all-reduce is charged: that
flatters the TP baselines, never ESP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TPGroupTerms:
    """Per-profile constants of the TP-group derivation (units in the comments)."""

    fixed_decode: float  # s: part of the decode constant D that more GPUs do not shrink
    allreduce_base: float  # s: latency of one all-reduce call on 2 GPUs
    allreduce_step: float  # s: extra latency per further GPU in the ring
    act_bytes_per_token: float  # bytes one all-reduce moves per token (hidden size × dtype)
    allreduces_per_forward: int  # all-reduce calls per forward pass (2 per layer)
    link_bandwidth: float  # bytes/s per GPU (ring all-reduce bus bandwidth)


def allreduce_time(t: TPGroupTerms, gpus: int, tokens: float) -> float:
    """Seconds of all-reduce in one forward pass of ``tokens`` tokens over ``gpus`` GPUs."""
    if gpus <= 1 or tokens <= 0:
        return 0.0
    lat = t.allreduce_base + t.allreduce_step * (gpus - 2)
    volume = 2 * (gpus - 1) / gpus * tokens * t.act_bytes_per_token / t.link_bandwidth
    return t.allreduces_per_forward * (lat + volume)


def group_allreduce_time(t: TPGroupTerms | None, tp: int, k: int, tokens: float) -> float:
    """All-reduce seconds a ``k``-instance TP group adds over one ``tp``-GPU instance."""
    if t is None or k <= 1:
        return 0.0
    return allreduce_time(t, k * tp, tokens) - allreduce_time(t, tp, tokens)


def tp_prefill_terms(a: float, b: float, c: float, k: int) -> tuple[float, float, float]:
    """``(A, B, C)`` of a ``k``-instance TP group from one instance's prefill coefficients."""
    return a, b / k, c / k


def tp_decode_terms(d: float, e: float, f: float, k: int,
                    t: TPGroupTerms | None) -> tuple[float, float, float]:
    """``(D, E, F)`` of a ``k``-instance TP group from one instance's decode coefficients."""
    fixed = min(d, t.fixed_decode) if t is not None else 0.0
    return fixed + (d - fixed) / k, e / k, f / k
