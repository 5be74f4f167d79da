"""Elastic instance allocation: compaction only when its gain beats the migration cost."""

from vllm_esp.planner import Migration, ScaleEvent
from vllm_esp.planner.manager import GlobalManager
from vllm_esp.planner.validate import validate_plan

from .helpers import cluster, cost_model, make_running, req


def _setup(bandwidth):
    # Batch 0 holds "a" on instances 0 (64 tokens) and 1 (16 tokens); instance 2 is idle.
    # A 1500-token prompt: T(1) = 0.01 + 0.15 = 0.16 s, T(2) = 0.02 + 0.075 = 0.095 s,
    # gain of a 2nd instance = 0.065/1500 = 4.3e-5 s/token.
    # Moving a's 16 tokens off instance 1 costs 16·1000 B / bandwidth, weighted by
    # (1/1500 + 1/100) (the prefill and a's decode both wait for the copy).
    st = cluster([100, 100, 100])
    make_running(st, 0, "a", {0: 64, 1: 16}, out=100)
    st.add_request(req("long", 1500, 10))
    plan = GlobalManager(cost_model(bandwidth=bandwidth)).plan(st, 0.0)
    assert validate_plan(st, plan) == []
    return st, plan


def test_fast_link_compacts_decode_kv_and_prefill_gets_two_instances():
    st, plan = _setup(bandwidth=1e9)  # 1.6e-5 s · 0.0107 = 1.7e-7 < 4.3e-5: compact
    assert plan.migrations == [Migration("a", 1, 0, 16)]
    assert ScaleEvent("down", 0, [1]) in plan.scale_events
    (pb,) = plan.prefill
    assert sorted(pb.instances) == [1, 2]
    assert abs(pb.predicted_time - 0.095) < 1e-12
    (d,) = plan.decode  # batch 0 keeps decoding: pausing it would give T(3) = 0.08 s, gain
    assert d.instances == [0]  # 1e-5 s/token < its cost 0.08/100
    st.apply_plan(plan)
    assert st.pool.placement["a"] == {0: 81}
    assert st.batches[0].instances == {0}


def test_slow_link_does_not_compact():
    st, plan = _setup(bandwidth=1e6)  # 0.016 s · 0.0107 = 1.7e-4 > 4.3e-5: keep as is
    assert plan.migrations == []
    (pb,) = plan.prefill
    assert pb.instances == [2]
    (d,) = plan.decode
    assert d.instances == [0, 1]
