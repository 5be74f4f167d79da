import random

import pytest

from vllm_esp.planner.cost_model import (
    CostModel, Linear3, ProfileMeta, builtin_profiles, fit_linear3, load_builtin, mean_relative_error,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_prefill_model_within_1pct(seed):
    rng = random.Random(seed)
    truth = Linear3(0.0123, 3.1e-5, 4.7e-10)  # s, s/token, s/token^2
    pts = []
    for bs in (1, 2, 4, 8):
        for l in (128, 512, 2048, 8192, 32768):
            s1, s2 = bs * l, bs * l * l
            t = truth(s1, s2) * (1 + rng.uniform(-1e-4, 1e-4))  # timer jitter
            pts.append((s1, s2, t))
    fit = fit_linear3(pts)
    for got, want in ((fit.a, truth.a), (fit.b, truth.b), (fit.c, truth.c)):
        assert abs(got - want) / want < 0.01
    assert mean_relative_error(fit, pts) < 1e-3


def test_fit_is_on_relative_error():
    # One huge point with a 10% outlier must not wreck the fit of the many small points.
    truth = Linear3(0.001, 1e-6, 0.0)
    pts = [(x, 1.0, truth(x, 1.0)) for x in (10, 100, 1000, 2000, 5000)] + [(1e7, 2.0, truth(1e7, 2.0) * 1.1)]
    fit = fit_linear3(pts)
    small = [p for p in pts if p[0] < 1e6]
    assert mean_relative_error(fit, small) < 0.05


def _model():
    return CostModel(ProfileMeta("m", "float16", 2, "A100", "estimated", "why"),
                     {1: Linear3(0.01, 1e-4, 1e-9), 2: Linear3(0.012, 5e-5, 5e-10)},
                     {1: Linear3(0.02, 1e-3, 1e-7)}, kv_bytes_per_token=1 << 17,
                     migration_bandwidth=25e9, migration_latency=1e-4)


def test_evaluation_units_and_extrapolation():
    cm = _model()
    assert cm.prefill_time(2, 1000, 1e6) == pytest.approx(0.012 + 0.05 + 0.0005)
    # k=4 not profiled: from k0=2 with ideal per-token scaling, same overhead
    assert cm.prefill_time(4, 1000, 1e6) == pytest.approx(0.012 + 0.025 + 0.00025)
    assert not cm.is_profiled(4)
    assert cm.decode_time(1, 0, 0) == 0.0
    assert cm.decode_time(1, 10, 1000) == pytest.approx(0.02 + 0.01 + 0.0001)
    assert cm.migration_time(1000) == pytest.approx(1e-4 + 1000 * (1 << 17) / 25e9)


def test_save_load_roundtrip(tmp_path):
    cm = _model()
    cm.prefill_time(8, 1, 1)  # extrapolation memo must not be saved
    cm.save(tmp_path / "p.json")
    back = CostModel.load(tmp_path / "p.json")
    assert back.prefill == {1: cm.prefill[1], 2: cm.prefill[2]}
    assert back.meta == cm.meta and back.kv_bytes_per_token == cm.kv_bytes_per_token


def test_builtin_profiles_load_and_are_labelled():
    names = builtin_profiles()
    assert names, "shipped profiles missing"
    for name in names:
        cm = load_builtin(name)
        assert cm.meta.source in ("measured", "estimated")
        assert cm.prefill_time(1, 1000, 1e6) > 0 and cm.decode_time(1, 8, 8000) > 0
