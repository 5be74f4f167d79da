"""Dispatching: worst-case KV admission, bounded out-of-order, prefill bound, slowdown rule."""

from vllm_esp.planner.manager import GlobalManager, ManagerConfig

from .helpers import cluster, cost_model, make_running, req


def _admitted(plan):
    return sorted(r for p in plan.prefill for r in p.req_ids)


def test_worst_case_admission_and_bounded_out_of_order():
    # pool 10 blocks of 16. r1: 50+40 tokens -> 6+1 blocks; r2: 30+20 -> 4+1 (7+5 > 10: wait);
    # r3: 10+5 -> 1+1 (7+2 <= 10): passes r2.
    st = cluster([10])
    for r in (req("r1", 50, 40), req("r2", 30, 20), req("r3", 10, 5)):
        st.add_request(r)
    mgr = GlobalManager(cost_model(), ManagerConfig(max_bypass=1))
    plan = mgr.plan(st, 0.0)
    assert _admitted(plan) == ["r1", "r3"]
    assert mgr.bypass == {"r2": 1}
    st.apply_plan(plan)
    st.add_request(req("r4", 1, 1))  # 1+1 blocks would fit, but r2 was passed max_bypass times
    plan = mgr.plan(st, 0.0)
    assert _admitted(plan) == []


def test_prefill_time_bound_exempts_the_first_request():
    # k=1: T = 0.01 + 1e-4 * S1. One 1000-token prompt: 0.11 s; two: 0.21 s > 0.15 s.
    st = cluster([200])
    for r in (req("a", 1000, 1), req("b", 1000, 1)):
        st.add_request(r)
    plan = GlobalManager(cost_model(), ManagerConfig(max_prefill_time=0.15)).plan(st, 0.0)
    assert _admitted(plan) == ["a"]
    plan = GlobalManager(cost_model(), ManagerConfig(max_prefill_time=0.05)).plan(st, 0.0)
    assert _admitted(plan) == ["a"]  # alone over the bound, but it would otherwise starve


def test_normalised_slowdown_rule_with_aging():
    # One instance, busy decoding "d" (expected output 20 -> weight 1/20). Prefill of 100 tokens
    # must pause it: T = 0.01 + 0.01 = 0.02 s. Cost 0.02/20 = 1e-3 s/token.
    # Fresh request: gain 0.02/100 = 2e-4 < cost -> wait. After 1 s: (1+0.02)/100 > cost.
    st = cluster([20])
    make_running(st, 0, "d", {0: 10}, out=20)
    st.add_request(req("new", 100, 10, arrival=0.0))
    mgr = GlobalManager(cost_model())
    plan = mgr.plan(st, now=0.0)
    assert _admitted(plan) == [] and [d.batch_id for d in plan.decode] == [0]
    plan = mgr.plan(st, now=1.0)
    assert _admitted(plan) == ["new"] and plan.paused_batch_ids == [0] and plan.decode == []
    assert plan.prefill[0].decode_batch_id == 0  # its KV lands on batch 0's instance: joins it


def test_prompt_larger_than_the_pool_is_rejected():
    st = cluster([2, 2])
    st.add_request(req("huge", 64, 1))
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    assert plan.rejected == ["huge"]
