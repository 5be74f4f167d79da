"""Aggregate a run's ``RequestResult``s into the numbers the reports print.

Means follow LoongServe's definitions (means over requests of each request's normalised
latency; mean TPOT only over requests with more than one output token). Percentiles use the
nearest-rank method so that p99 of 100 values is an actual observed value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vllm_esp.metrics.results import RequestResult


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in [0, 100]); nan for an empty list."""
    if not xs:
        return math.nan
    xs = sorted(xs)
    k = max(0, math.ceil(p / 100 * len(xs)) - 1)
    return xs[k]


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


@dataclass(frozen=True, slots=True)
class Summary:
    """One run (one system × workload × rate). Latencies in seconds unless named ``_ms``."""

    num_requests: int
    num_finished: int
    duration: float  # s, first arrival to last finish (inf if any request never finished)
    throughput: float  # finished requests / s
    mean_latency: float  # s
    per_token_latency: float  # s/token, mean of latency / (prompt + output)
    input_token_latency: float  # s/token, mean of TTFT / prompt
    output_token_latency: float  # s/token, mean TPOT (requests with > 1 output token)
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    tpot_p50: float
    tpot_p90: float
    tpot_p99: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(results: list[RequestResult]) -> Summary:
    if not results:
        raise ValueError("no results to summarise")
    finished = [r for r in results if r.finished]
    start = min(r.arrival for r in results)
    end = max(r.finish for r in results)
    duration = end - start
    ttfts = [r.ttft for r in results]
    tpots = [r.tpot for r in results if r.output_len > 1]
    return Summary(
        num_requests=len(results),
        num_finished=len(finished),
        duration=duration,
        throughput=(len(finished) / max(max(r.finish for r in finished) - start, 1e-12)
                    if finished else 0.0),
        mean_latency=_mean([r.latency for r in results]),
        per_token_latency=_mean([r.per_token_latency for r in results]),
        input_token_latency=_mean([r.input_token_latency for r in results]),
        output_token_latency=_mean(tpots) if tpots else 0.0,
        ttft_p50=percentile(ttfts, 50),
        ttft_p90=percentile(ttfts, 90),
        ttft_p99=percentile(ttfts, 99),
        tpot_p50=percentile(tpots, 50),
        tpot_p90=percentile(tpots, 90),
        tpot_p99=percentile(tpots, 99),
    )
