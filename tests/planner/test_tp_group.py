"""A static TP group of k instances (the baselines' engines): split and all-reduce by hand."""

import pytest

from vllm_esp.planner.cost_model import CostModel, Linear3, ProfileMeta, load_builtin
from vllm_esp.planner.tp_group import (
    TPGroupTerms,
    allreduce_time,
    group_allreduce_time,
    tp_decode_terms,
)

TERMS = TPGroupTerms(fixed_decode=0.004, allreduce_base=6e-6, allreduce_step=1.5e-6,
                     act_bytes_per_token=8192, allreduces_per_forward=64,
                     link_bandwidth=240e9)


def _cost(terms=TERMS, tp=2):
    return CostModel(ProfileMeta("m", "bf16", tp, "gpu", "estimated"),
                     prefill={1: Linear3(0.004, 3.5e-5, 9e-10)},
                     decode={1: Linear3(0.008, 7e-5, 1.6e-7)},
                     kv_bytes_per_token=1, migration_bandwidth=1.0, tp_group=terms)


def test_ring_allreduce_by_hand():
    # 8 GPUs, 1000 tokens: latency 6 + 1.5*6 = 15 us; volume 2*7/8 * 8.192 MB / 240 GB/s
    # = 59.73 us; 64 calls -> 4.783 ms. On 2 GPUs: (6 + 34.13) us * 64 = 2.568 ms.
    assert allreduce_time(TERMS, 8, 1000) == pytest.approx(64 * (15e-6 + 1.75 * 8.192e6 / 240e9))
    assert allreduce_time(TERMS, 2, 1000) == pytest.approx(64 * (6e-6 + 8.192e6 / 240e9))
    assert allreduce_time(TERMS, 1, 1000) == 0.0
    # a group of 4 TP-2 instances adds the difference over one instance's own all-reduce
    assert group_allreduce_time(TERMS, 2, 4, 1000) == pytest.approx(
        allreduce_time(TERMS, 8, 1000) - allreduce_time(TERMS, 2, 1000))
    assert group_allreduce_time(TERMS, 2, 1, 1000) == 0.0
    assert group_allreduce_time(None, 2, 4, 1000) == 0.0


def test_tp_decode_splits_weight_read_and_compute_not_the_launch():
    # D = 8 ms of which 4 ms launch: 4 + 4/4 = 5 ms on 4 instances; E and F divided by 4.
    assert tp_decode_terms(0.008, 7e-5, 1.6e-7, 4, TERMS) == pytest.approx((0.005, 1.75e-5, 4e-8))
    assert tp_decode_terms(0.008, 7e-5, 1.6e-7, 4, None) == pytest.approx((0.002, 1.75e-5, 4e-8))


def test_tp_group_iteration_times():
    c = _cost()
    ar = group_allreduce_time(TERMS, 2, 4, 100)
    assert c.tp_decode_time(4, 100, 150_000) == pytest.approx(
        0.005 + 100 * 1.75e-5 + 150_000 * 4e-8 + ar)
    assert c.tp_decode_time(1, 100, 150_000) == pytest.approx(c.decode_time(1, 100, 150_000))
    # prefill: A unchanged, B and C split, all-reduce of the chunk's tokens
    assert c.tp_prefill_time(4, 2048, 2048 ** 2) == pytest.approx(
        0.004 + (3.5e-5 * 2048 + 9e-10 * 2048 ** 2) / 4 + group_allreduce_time(TERMS, 2, 4, 2048))
    # mixed: one constant max(A, D), both kinds' terms, one all-reduce over all tokens
    assert c.tp_mixed_time(4, 2048, 2048 ** 2, 100, 150_000) == pytest.approx(
        0.005 + (3.5e-5 * 2048 + 9e-10 * 2048 ** 2) / 4 + 100 * 1.75e-5 + 150_000 * 4e-8
        + group_allreduce_time(TERMS, 2, 4, 2148))


def test_tp_group_terms_round_trip_and_ship_with_estimated_profiles(tmp_path):
    c = _cost()
    c.save(tmp_path / "p.json")
    assert CostModel.load(tmp_path / "p.json").tp_group == TERMS
    est = load_builtin("estimated_a100-80g_lwm-7b-1m_tp2")
    assert est.tp_group is not None and est.tp_group.fixed_decode == pytest.approx(0.004)
    assert load_builtin("measured_cpu_tiny-llama").tp_group is None
