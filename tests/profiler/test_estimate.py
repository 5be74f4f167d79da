"""Estimated profiles: the arithmetic of vllm_esp/profiler/estimate.py, checked by hand."""

import pytest

from vllm_esp.profiler.estimate import DEVICES, MODELS, estimate_profile


def test_llama3_8b_on_a100_by_hand():
    m, d = MODELS["llama-3-8b"], DEVICES["a100-80g"]
    cm = estimate_profile(m, d, tp=1, ks=(1, 2))
    # K+V bytes per token: 2 · 32 layers · 8 kv heads · 128 · 2 bytes = 131072
    assert cm.kv_bytes_per_token == 131072
    # linear FLOPs: 2·P per token at 60% of 312 TFLOP/s
    assert cm.prefill[1].b == pytest.approx(2 * 6.98e9 / (312e12 * 0.6))
    assert cm.prefill[2].b == pytest.approx(cm.prefill[1].b / 2)  # ideal compute scaling
    assert cm.prefill[2].a > cm.prefill[1].a  # but ring hops add latency
    # decode: weights streamed once per iteration at 80% of HBM bandwidth, plus launch overhead
    assert cm.decode[1].a == pytest.approx(4e-3 + 6.98e9 * 2 / (2.039e12 * 0.8))
    assert cm.meta.source == "estimated"


def test_bigger_groups_pay_off_only_for_long_prompts():
    cm = estimate_profile(MODELS["lwm-7b-1m"], DEVICES["a100-80g"], tp=2)
    assert cm.prefill_time(8, 100_000, 1e10) < cm.prefill_time(1, 100_000, 1e10) / 6
    assert cm.prefill_time(8, 64, 4096) > cm.prefill_time(1, 64, 4096)
