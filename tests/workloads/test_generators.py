"""Generated workloads must match the parameters their docs promise."""

import math
import random
import statistics

import pytest

from vllm_esp.workloads import (BASE_SPECS, PowerLaw, TruncLogNormal, generate, poisson,
                                rate_sweep)

N = 6000


def _empirical_quantile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


@pytest.mark.parametrize("name", sorted(BASE_SPECS))
def test_base_workload_quantiles_match_documented_law(name):
    spec = BASE_SPECS[name]
    reqs = generate(name, N, seed=1)
    prompts = [r.prompt_len for r in reqs]
    outputs = [r.output_len for r in reqs]
    assert min(prompts) >= spec.prompt.lo and max(prompts) <= spec.prompt.hi
    assert min(outputs) >= spec.output.lo and max(outputs) <= spec.output.hi
    for p in (0.1, 0.5, 0.9):
        # integer rounding shifts quantiles down by < 1 token; sampling error ~ a few percent
        for xs, law in ((prompts, spec.prompt), (outputs, spec.output)):
            want = law.quantile(p)
            got = _empirical_quantile(xs, p)
            assert abs(got - want) <= 0.08 * want + 1, (name, p, got, want)


def test_truncated_lognormal_median_is_untruncated_when_symmetric_bounds():
    law = TruncLogNormal(1000, 1.0, 10, 100_000 - 1)  # ln bounds symmetric around ln 1000
    assert law.quantile(0.5) == pytest.approx(1000, rel=1e-6)


def test_truncation_moves_median_up_when_lower_tail_cut():
    assert TruncLogNormal(1000, 1.0, 900, 10**6).quantile(0.5) > 1000


def test_sharegpt_is_much_shorter_than_lveval():
    s = statistics.median(r.prompt_len for r in generate("sharegpt", 500))
    lv = statistics.median(r.prompt_len for r in generate("lveval", 500))
    assert lv > 50 * s


def test_mixed_is_equal_parts_of_the_three():
    reqs = generate("mixed", 3001, seed=3)
    assert len(reqs) == 3001 and [r.request_id for r in reqs] == list(range(3001))
    # bands: ShareGPT prompts are <= 16384 tokens, LV-Eval >= 15100, L-Eval in between mostly
    long_ = sum(r.prompt_len >= 100_000 for r in reqs)
    short = sum(r.prompt_len < 2700 for r in reqs)
    # ~1/3 are ShareGPT; nearly all ShareGPT prompts are < 2700 (P ≈ 0.89), L-Eval never is
    want_short = 1001 * _prob_below(BASE_SPECS["sharegpt"].prompt, 2700)
    assert abs(short - want_short) < 0.1 * want_short
    # the shuffle interleaves the parts: the first third is not all one dataset
    assert 0 < sum(r.prompt_len < 2700 for r in reqs[:300]) < 300
    assert long_ > 0


def _prob_below(law, x):
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if law.quantile(mid) < x:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("alpha", [1.0, 1.2, 1.4])
def test_zipf_cdf_matches_power_law(alpha):
    reqs = generate(f"zipf{alpha}", N, seed=2)
    law = PowerLaw(alpha, 10, 200_000)
    for x in (50, 1000, 20000):
        frac = sum(r.prompt_len < x for r in reqs) / N
        assert frac == pytest.approx(law.cdf(x), abs=0.02)


def test_zipf_larger_alpha_means_shorter_prompts():
    m = [statistics.median(r.prompt_len for r in generate(f"zipf{a}", 2000)) for a in (1.0, 1.4)]
    assert m[1] < m[0]


def test_power_law_quantile_inverts_cdf():
    for alpha in (0.8, 1.0, 1.3):
        law = PowerLaw(alpha, 10, 5000, beta=3)
        for p in (0.01, 0.3, 0.77):
            assert law.cdf(law.quantile(p)) == pytest.approx(p, abs=1e-9)


def test_same_seed_same_workload_other_seed_differs():
    assert generate("mixed", 200, seed=5) == generate("mixed", 200, seed=5)
    assert generate("mixed", 200, seed=5) != generate("mixed", 200, seed=6)


def test_unknown_workload_is_rejected():
    with pytest.raises(ValueError, match="unknown workload"):
        generate("alpaca", 3)


def test_poisson_rate_and_exponential_gaps():
    reqs = poisson(generate("sharegpt", N), rate=4.0, seed=9)
    gaps = [b.arrival - a.arrival for a, b in zip(reqs, reqs[1:])]
    assert all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    # exponential: the coefficient of variation is 1 and P(gap > mean) = e^-1
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, abs=0.06)
    assert sum(g > 0.25 for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.03)


def test_poisson_keeps_lengths_and_scales_with_rate():
    base = generate("leval", 50)
    a, b = poisson(base, 1.0, seed=4), poisson(base, 2.0, seed=4)
    assert [(r.prompt_len, r.output_len) for r in a] == [(r.prompt_len, r.output_len) for r in base]
    assert [r.arrival for r in b] == pytest.approx([r.arrival / 2 for r in a])
    assert poisson(base, 1.0, seed=5)[3].arrival != a[3].arrival
    assert {r.arrival for r in poisson(base, math.inf)} == {0.0}


def test_rate_sweep_endpoints_and_spacing():
    rs = rate_sweep(0.5, 8, 5)
    assert rs[0] == 0.5 and rs[-1] == 8 and rs == sorted(rs)
    assert rs[1] / rs[0] == pytest.approx(rs[2] / rs[1])
    assert rate_sweep(1, 3, 3, geometric=False) == [1, 2, 3]
    with pytest.raises(ValueError):
        rate_sweep(0, 1, 3)
