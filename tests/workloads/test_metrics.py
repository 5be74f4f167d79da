"""Metrics, SLO rules and the max-rate search (hand-computed expectations)."""

import math

import pytest

from vllm_esp.metrics import (SLO, RequestResult, attainment, max_rate_under_slo, percentile,
                              summarize, summary_table)
from vllm_esp.metrics.plots import plot_latency_vs_rate


def test_normalised_latencies_by_hand():
    r = RequestResult(0, prompt_len=100, output_len=11, arrival=1.0, first_token=3.0, finish=4.0)
    assert r.latency == 3.0 and r.ttft == 2.0
    assert r.tpot == pytest.approx(0.1)
    assert r.per_token_latency == pytest.approx(3.0 / 111)
    assert r.input_token_latency == pytest.approx(0.02)
    assert r.output_token_latency == pytest.approx(0.1)
    assert RequestResult(1, 5, 1, 0.0, 0.5, 0.5).tpot == 0.0


def test_summary_means_and_percentiles():
    rs = [RequestResult(i, 10, 2, float(i), i + 1.0 + i, i + 2.0 + i) for i in range(4)]
    s = summarize(rs)
    # ttft = 1 + i, tpot = 1, latency = 2 + i
    assert s.mean_latency == pytest.approx(3.5)
    assert s.ttft_p50 == 2.0 and s.ttft_p99 == 4.0
    assert s.input_token_latency == pytest.approx(2.5 / 10)
    assert s.output_token_latency == pytest.approx(1.0)
    assert s.per_token_latency == pytest.approx(3.5 / 12)
    assert s.num_finished == 4 and s.duration == pytest.approx(8.0)
    assert s.throughput == pytest.approx(4 / 8)
    assert "| sys | 2 | 4/4 |" in summary_table([("sys", 2, s)])


def test_percentile_nearest_rank():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50 and percentile(xs, 90) == 90 and percentile(xs, 99) == 99
    assert percentile([7.0], 99) == 7.0 and math.isnan(percentile([], 50))


def test_unfinished_request_breaks_the_slo():
    ok = RequestResult(0, 100, 2, 0.0, 0.1, 0.2)
    lost = RequestResult(1, 100, 2, 0.0, math.inf, math.inf)
    slo = SLO(1.0, 1.0, 1.0)
    assert slo.met_by(summarize([ok]))
    s = summarize([ok, lost])
    assert s.num_finished == 1 and math.isinf(s.mean_latency)
    assert not slo.met_by(s)
    assert attainment([ok, lost], slo) == 0.5


def test_slo_violations_named():
    r = RequestResult(0, 10, 3, 0.0, 1.0, 2.0)  # in-tok 0.1, out-tok 0.5, per-tok 2/13
    assert SLO(1, 1, 1).violations(summarize([r])) == []
    assert SLO(0.1, 0.2, 0.4).violations(summarize([r])) == ["per_token", "output_token"]
    assert SLO.from_ms(92, 20, 320) == SLO(0.092, 0.02, 0.32)


def _fake_system(capacity):
    """Latency grows like an M/M/1 queue: unbounded at ``capacity`` req/s."""
    def evaluate(rate):
        lat = math.inf if rate >= capacity else 1.0 / (capacity - rate)
        return summarize([RequestResult(0, 1, 1, 0.0, lat, lat)])
    return evaluate


def test_max_rate_search_brackets_and_bisects():
    slo = SLO(0.5, 100, 100)  # per-token = latency / 2 <= 0.5 -> latency <= 1 -> rate <= c - 1
    res = max_rate_under_slo(_fake_system(7.0), slo, start=1.0, rel_tol=0.01)
    assert res.max_rate == pytest.approx(6.0, rel=0.011) and res.max_rate <= 6.0
    assert not res.capped
    assert len(res.evaluations) < 15
    low = max_rate_under_slo(_fake_system(1.2), slo, start=4.0, rel_tol=0.01)
    assert low.max_rate == pytest.approx(0.2, rel=0.011)
    none = max_rate_under_slo(_fake_system(0.5), slo, start=1.0, lo=0.01)
    assert none.max_rate == 0.0
    capped = max_rate_under_slo(_fake_system(1e9), slo, start=1.0, hi=64)
    assert capped.capped and capped.max_rate == 64


def test_plot_writes_png(tmp_path):
    curves = {name: {rate: summarize([RequestResult(0, 10, 2, 0.0, rate * k, rate * k * 2)])
                     for rate in (1.0, 2.0)} for name, k in (("a", 0.01), ("b", 0.02))}
    out = plot_latency_vs_rate(curves, tmp_path / "x" / "fig.png", "t", SLO(0.1, 0.1, 0.1))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
