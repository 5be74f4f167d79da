"""The simulator reproduces timelines computed by hand (toy policy, linear cost model)."""

import pytest

from vllm_esp.planner import CostModel, Linear3, ProfileMeta
from vllm_esp.simulator.core import round_robin, run
from vllm_esp.simulator.planner_engine import PlannerEngine
from vllm_esp.workloads import Request

from .toy_policy import OnePerInstancePolicy


def toy_cost():
    """prefill: 0.1 s + 1 ms/token on any k; decode: 0.05 s per iteration; migration 1 ms/token."""
    return CostModel(
        meta=ProfileMeta("toy", "fp32", 1, "paper"),
        prefill={1: Linear3(0.1, 0.001, 0.0)},
        decode={1: Linear3(0.05, 0.0, 0.0)},
        kv_bytes_per_token=1000, migration_bandwidth=1e6)


def engine(n_inst, blocks=100, trace=True):
    return PlannerEngine("toy", OnePerInstancePolicy(), toy_cost(), n_inst, blocks, 16,
                         keep_trace=trace)


def test_two_instances_lockstep_timeline():
    # r0 (100 tok prompt, 3 out) at t=0; r1 (200, 2) at t=0.05 while r0's prefill runs.
    #   [0.00, 0.20] prefill r0 on inst 0                         -> r0 first token at 0.20
    #   [0.20, 0.50] decode r0 on 0 (0.05) || prefill r1 on 1 (0.30): lockstep max = 0.30
    #   [0.50, 0.55] decode r0 and r1                             -> r0 done, r1 done at 0.55
    reqs = [Request(0, 100, 3, 0.0), Request(1, 200, 2, 0.05)]
    e = engine(2)
    res = run(reqs, [e], lambda r: e)
    assert [(r.first_token, r.finish) for r in res] == [
        pytest.approx((0.20, 0.55)), pytest.approx((0.50, 0.55))]
    assert [(it.start, it.end) for it in e.trace] == [
        pytest.approx((0.0, 0.2)), pytest.approx((0.2, 0.5)), pytest.approx((0.5, 0.55))]
    assert e.trace[1].prefill == [((1,), ("1",))] and e.trace[1].decode == [((0,), 1)]
    assert e.state.pool.total_free_blocks() == 200  # everything freed at the end


def test_one_instance_queues_second_request():
    #   [0.00, 0.20] prefill r0; [0.20, 0.25] [0.25, 0.30] decode r0 (done at 0.30)
    #   [0.30, 0.60] prefill r1; [0.60, 0.65] decode r1
    reqs = [Request(0, 100, 3, 0.0), Request(1, 200, 2, 0.05)]
    e = engine(1)
    res = run(reqs, [e], lambda r: e)
    assert [(r.ttft, r.latency) for r in res] == [
        pytest.approx((0.20, 0.30)), pytest.approx((0.55, 0.60))]


def test_idle_gap_and_single_token_output():
    # r0 finishes at 0.2 (output 1 token = prefill only); r1 arrives at 1.0 to an idle engine.
    reqs = [Request(0, 100, 1, 0.0), Request(1, 100, 1, 1.0)]
    e = engine(1)
    res = run(reqs, [e], lambda r: e)
    assert [r.finish for r in res] == pytest.approx([0.2, 1.2])
    assert res[0].tpot == 0.0


def test_request_larger_than_pool_never_finishes():
    reqs = [Request(0, 100, 1, 0.0), Request(1, 10_000, 1, 0.0)]
    e = engine(1, blocks=10)  # 160 tokens of KV
    res = run(reqs, [e], lambda r: e)
    assert res[0].finished and not res[1].finished
    assert e.rejected == ["1"]


def test_horizon_cuts_unfinished_requests():
    reqs = [Request(0, 100, 50, 0.0)]  # 0.2 + 49 * 0.05 = 2.65 s
    e = engine(1)
    assert run(reqs, [e], lambda r: e)[0].finish == pytest.approx(2.65)
    e = engine(1)
    assert not run(reqs, [e], lambda r: e, horizon=1.0)[0].finished


def test_round_robin_replicas_are_independent_clocks():
    # Two single-instance replicas: r1 goes to replica 1 and starts at its arrival (0.05),
    # not when replica 0's iteration ends: replicas are separate engines, not lockstep.
    reqs = [Request(0, 100, 3, 0.0), Request(1, 200, 2, 0.05)]
    es = [engine(1), engine(1)]
    res = run(reqs, es, round_robin(es))
    assert res[1].first_token == pytest.approx(0.35) and res[1].finish == pytest.approx(0.40)
    assert res[0].finish == pytest.approx(0.30)


def test_async_groups_run_on_their_own_clocks():
    # Same requests as the lockstep test, but r1 starts on the idle instance 1 at its arrival:
    #   inst 0: prefill r0 [0, 0.2], decode [0.2, 0.25], [0.25, 0.30] -> r0 done at 0.30
    #   inst 1: prefill r1 [0.05, 0.35], decode [0.35, 0.40]            -> r1 done at 0.40
    from vllm_esp.simulator.async_engine import AsyncPlannerEngine

    reqs = [Request(0, 100, 3, 0.0), Request(1, 200, 2, 0.05)]
    e = AsyncPlannerEngine("toy", OnePerInstancePolicy(), toy_cost(), 2, 100, 16)
    res = run(reqs, [e], lambda r: e)
    assert [(r.first_token, r.finish) for r in res] == [
        pytest.approx((0.20, 0.30)), pytest.approx((0.35, 0.40))]
    assert e.state.pool.total_free_blocks() == 200 and not e._groups
