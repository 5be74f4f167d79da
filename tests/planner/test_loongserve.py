"""LoongServe's scheduler as ported (planner/policies/loongserve*.py), on hand-computed cases.

Cost model (tests/planner/helpers.cost_model): prefill T(k) = 0.01·k + 1e-4/k · S1 seconds.
"""

import pytest

from vllm_esp.planner import ClusterState, Instance, Request
from vllm_esp.planner.policies.loongserve import LoongServePolicy, best_groups, fill_most_used
from vllm_esp.planner.policies.loongserve_decode import DecodeView, plan_decode
from vllm_esp.planner.policies.loongserve_queue import (
    LoongServeConfig,
    MemoryEstimate,
    QueueView,
    RequestQueue,
)
from vllm_esp.planner.state import BatchState
from vllm_esp.planner.validate import validate_plan

from .helpers import cost_model, req


def test_lightllm_peak_memory_estimate():
    # (held, left): sorted by left 10, 5, 1 -> held 5, 15, 35 cumulated -> peaks
    # 5 + 10·1 = 15, 15 + 5·2 = 25, 35 + 1·3 = 38: all three alive one step later hold 38.
    m = MemoryEstimate([(10, 5), (20, 1), (5, 10)], capacity=40)
    assert m.peak() == 38
    assert m.fits([(1, 0)])  # ends at once: the peak stays 38
    assert not m.fits([(2, 1)])  # one step later all four hold 6 + 11 + 21 + 3 = 41


def _running(rid, prompt, out, max_out):
    return Request(rid, prompt, max_out, output_len=out)


def test_dispatch_isolated_prefill_within_the_estimated_wait():
    # 4 instances of 1000 tokens, 2500 used -> at most 1 idle after compaction (1000 tokens).
    # 800 tokens there: T(1) = 0.09 s vs T(4) = 0.06 s: 0.03 s slower. Mean output 12, one
    # running request with 1 token out: max(10, 12-1, 0.1) = 11 iterations x 22 ms = 0.242 s
    # >= 0.03: admitted (memory peak 2500 + 18 then 3301 + 2·8 <= 4000).
    q = RequestQueue(LoongServeConfig())
    running = [_running("a", 2499, 1, 20)]
    view = QueueView([req("r", 800, 10)], running, {0: 1000, 1: 1000, 2: 500, 3: 0}, 1000)
    assert [r.req_id for r in q.admit(view, cost_model(), mean_output=12)] == ["r"]


def test_dispatch_preempting_prefill_weighs_decodes_per_output_token():
    # 4 instances of 1100 tokens, 2500 used by three requests of 833/834/833 tokens -> 1 idle
    # after compaction: 1500 tokens do not fit its 1100 ("undecided"). All 4 instances:
    # T(4, 1500) = 0.0775 s. With 1 token out each: 0.0775 * 3 = 0.2325 > wait 0.242 s
    # * 1/1500: not taken. With 500 out each: max(10, 12-500, 50) = 50 iterations -> 1.1 s;
    # 0.0775 * 3/500 = 4.7e-4 <= 1.1/1500 = 7.3e-4: taken.
    used = {0: 1100, 1: 1100, 2: 300, 3: 0}
    for out, taken in ((1, False), (500, True)):
        q = RequestQueue(LoongServeConfig())
        running = [_running(f"a{i}", p - out, out, out + 50) for i, p in enumerate((833, 834, 833))]
        view = QueueView([req("r", 1500, 10)], running, used, 1100)
        assert bool(q.admit(view, cost_model(), mean_output=12)) is taken


def test_dispatch_out_of_order_is_bounded():
    # memory: 2 instances of 100 tokens. "big" (prompt 150 + 100 out) never fits the estimate;
    # with max_num_ooe = 1 the small one behind it passes once, then the queue blocks.
    q = RequestQueue(LoongServeConfig(max_num_ooe=1))
    view = QueueView([req("big", 150, 100), req("s1", 10, 5)], [], {0: 0, 1: 0}, 100)
    assert [r.req_id for r in q.admit(view, cost_model(), 12)] == ["s1"]
    view = QueueView([req("big", 150, 100), req("s2", 10, 5)], [], {0: 0, 1: 0}, 100)
    assert q.admit(view, cost_model(), 12) == []


def test_prefill_dp_by_hand():
    # lengths 300, 100 on two roomy instances: one group on 1 instance 0.05 s x (1/300 + 1/100)
    # = 6.7e-4; on 2: 0.04 x 0.01333 = 5.3e-4; split 0.04/300 + 0.02/100 = 3.3e-4. LoongServe's
    # pruning (the last group of (2 requests, 2 instances) uses at least the 2 instances that
    # of (1, 2) used) never tries the split: one group on both, as its C++ DP returns.
    groups = best_groups([300, 100], [1000, 1000], cost_model())
    assert [(g[:4], round(g[4], 6)) for g in groups] == [((0, 2, 0, 2), 0.04)]
    # one instance only: the best of (300 | 100) cannot be formed, both share it
    ((r0, r1, i0, i1, t),) = best_groups([300, 100], [1000], cost_model())
    assert (r0, r1, i0, i1) == (0, 2, 0, 1) and t == pytest.approx(0.05)
    # 500 tokens on instances with 300 free each: only both together hold it.
    ((r0, r1, i0, i1, t),) = best_groups([500], [300, 300], cost_model())
    assert (i0, i1) == (0, 2) and t == pytest.approx(0.045)


def test_prefill_kv_fills_the_most_used_instance_first():
    used = {0: 900, 1: 100}
    keep = fill_most_used([req("r", 300)], [1, 0], used, 1000)
    assert [(k.instance_id, k.begin, k.end) for k in keep["r"]] == [(0, 0, 100), (1, 100, 300)]
    assert used == {0: 1000, 1: 300}


def _decode_state(n_inst, batches):
    st = ClusterState([Instance(i, 1000) for i in range(n_inst)], 1)
    for bid, (insts, n) in batches.items():
        b = st.batches[bid] = BatchState(bid, set(insts))
        for j in range(n):
            rid = f"{bid}-{j}"
            st.running[rid] = Request(rid, 10, 100, output_len=1)
            b.req_ids.append(rid)
    return st


def test_masters_fill_the_most_used_instance_in_mini_batches():
    # 200 requests on instances used 500 (0) and 800 (1): instance 1 first, min(200 left,
    # 200 free, max(200 // 2, 128)) = 128; then instance 0 the other 72.
    st = _decode_state(2, {0: ([0, 1], 200)})
    step = plan_decode(st, [DecodeView(0, [0, 1], list(st.batches[0].req_ids))],
                       {0: 500, 1: 800}, 1000, [], cost_model(), 128)
    masters = step.decode[0].masters
    assert sum(m == 1 for m in masters.values()) == 128 and sum(m == 0 for m in masters.values()) == 72
    assert all(masters[f"0-{j}"] == 1 for j in range(128))  # in batch order


def test_compute_bound_batch_scales_up_onto_an_idle_instance():
    # 300 requests on one instance: 300 // 1 > 128 -> take idle instance 2; 150 each.
    st = _decode_state(3, {0: ([0], 300)})
    extra = [2]
    step = plan_decode(st, [DecodeView(0, [0], list(st.batches[0].req_ids))],
                       {0: 100, 1: 0, 2: 0}, 1000, extra, cost_model(), 128)
    (d,) = step.decode
    assert d.instances == [0, 2] and sorted(d.masters.values()).count(2) == 150
    assert [(e.kind, e.instances) for e in step.scale_events] == [("up", [2])]


def test_batch_short_of_room_merges_with_one_that_has_some():
    # batch 0 on instance 0: 995 used, 10 requests -> room -5; batch 1 on instance 1: 10 used,
    # 5 requests -> room 985. Merged into batch 0, which then decodes on both.
    st = _decode_state(2, {0: ([0], 10), 1: ([1], 5)})
    views = [DecodeView(b, sorted(st.batches[b].instances), list(st.batches[b].req_ids))
             for b in (0, 1)]
    step = plan_decode(st, views, {0: 995, 1: 10}, 1000, [], cost_model(), 128)
    assert [(e.kind, e.batch_id, e.merged_batch_ids) for e in step.scale_events] == [
        ("merge", 0, [1])]
    assert [d.batch_id for d in step.decode] == [0] and len(step.decode[0].masters) == 15
    alone = [DecodeView(0, [0], list(st.batches[0].req_ids))]
    assert plan_decode(st, alone, {0: 995, 1: 10}, 1000, [], cost_model(), 128) is None


def test_policy_offloads_the_newest_request_when_the_cluster_is_full():
    st = _decode_state(1, {0: ([0], 3)})
    for rid in st.running:
        st.pool.add(rid, 0, 333)
    for j, rid in enumerate(st.running):
        st.running[rid].arrival_time = float(j)
    pol = LoongServePolicy(cost_model())
    pol.has_wait_tokens = 0
    plan = pol.plan(st, 10.0)
    assert plan.preempted == ["0-2"] and plan.decode == []


def test_policy_starts_a_macro_iteration_and_learns_the_mean_output():
    st = ClusterState([Instance(i, 1000) for i in range(2)], 1)
    st.add_request(req("a", 300, 20))
    st.add_request(req("b", 100, 20))
    pol = LoongServePolicy(cost_model())
    plan = pol.plan(st, 0.0)
    assert validate_plan(st, plan) == []
    assert sorted(r for pb in plan.prefill for r in pb.req_ids) == ["a", "b"]
    assert pol.macro_time == pytest.approx(max(pb.predicted_time for pb in plan.prefill))
    assert pol.mean_output == 512.0
    pol.on_finished(Request("x", 10, 20, output_len=20))
    assert pol.mean_output == (512 + 20) / 2
