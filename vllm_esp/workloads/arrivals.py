"""Seeded Poisson arrivals and request-rate sweeps.

All rates of a sweep reuse the same unit-rate exponential gaps, scaled by ``1/rate``
(common random numbers): the only thing that changes between two points of a latency-vs-rate
curve is the rate, not the luck of the draw, so curves are smooth and the max-rate search is
monotone in practice. Systems compared at one rate see byte-identical arrivals.
"""

from __future__ import annotations

import math
import random

from vllm_esp.workloads.types import Request


def unit_gaps(n: int, seed: int) -> list[float]:
    """``n`` i.i.d. Exp(1) inter-arrival gaps for ``seed`` (seconds at rate 1 req/s)."""
    rng = random.Random(f"arrivals:{seed}")
    return [-math.log(1.0 - rng.random()) for _ in range(n)]


def poisson(requests: list[Request], rate: float, seed: int = 0) -> list[Request]:
    """Requests in order with Poisson arrivals of ``rate`` req/s; the first arrives at its gap.

    ``rate = inf`` makes every request arrive at time 0 (an offline burst).
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0 req/s, got {rate}")
    if math.isinf(rate):
        return [r.at(0.0) for r in requests]
    t = 0.0
    out = []
    for r, g in zip(requests, unit_gaps(len(requests), seed)):
        t += g / rate
        out.append(r.at(t))
    return out


def rate_sweep(lo: float, hi: float, points: int, geometric: bool = True) -> list[float]:
    """``points`` rates from ``lo`` to ``hi`` req/s inclusive (geometric spacing by default,
    since interesting behaviour spans orders of magnitude across workloads)."""
    if points < 1 or lo <= 0 or hi < lo:
        raise ValueError(f"bad sweep lo={lo} hi={hi} points={points}")
    if points == 1:
        return [lo]
    if geometric:
        f = (hi / lo) ** (1 / (points - 1))
        return [lo * f ** i for i in range(points - 1)] + [hi]
    step = (hi - lo) / (points - 1)
    return [lo + step * i for i in range(points - 1)] + [hi]
