"""Decode scaling: scale up or merge before preempting; preempt only when the pool is full."""

from vllm_esp.planner import ScaleEvent
from vllm_esp.planner.manager import GlobalManager
from vllm_esp.planner.validate import validate_plan

from .helpers import cluster, cost_model, make_running


def _plan(state):
    plan = GlobalManager(cost_model()).plan(state, now=0.0)
    assert validate_plan(state, plan) == []
    return plan


def test_batch_out_of_kv_scales_up_instead_of_preempting():
    st = cluster([2, 4])
    make_running(st, 0, "a", {0: 16})  # full block: the next token needs a fresh one
    make_running(st, 0, "b", {0: 16})
    plan = _plan(st)
    assert plan.preempted == []
    assert ScaleEvent("up", 0, [1]) in plan.scale_events
    (d,) = plan.decode
    assert d.instances == [0, 1] and d.masters == {"a": 1, "b": 1}
    st.apply_plan(plan)
    assert st.pool.placement["a"] == {0: 16, 1: 1}
    assert st.batches[0].instances == {0, 1}


def test_batch_out_of_kv_merges_with_a_batch_that_has_room():
    st = cluster([2, 4])
    make_running(st, 0, "a", {0: 16})
    make_running(st, 0, "b", {0: 16})
    make_running(st, 1, "c", {1: 16})  # batch 1 needs 1 of its 3 free blocks
    plan = _plan(st)
    assert plan.preempted == []
    assert ScaleEvent("merge", 0, merged_batch_ids=[1]) in plan.scale_events
    (d,) = plan.decode
    assert d.batch_id == 0 and set(d.masters) == {"a", "b", "c"} and d.instances == [0, 1]
    st.apply_plan(plan)
    assert list(st.batches) == [0] and st.pool.used == {0: 2, 1: 4}


def test_preempts_newest_only_when_the_pool_is_full():
    st = cluster([2, 1])
    make_running(st, 0, "a", {0: 16})
    make_running(st, 0, "b", {0: 16})
    make_running(st, 1, "c", {1: 15})  # has slack: needs no block, has none to give
    plan = _plan(st)
    assert plan.preempted == ["b"]
    masters = {rid: m for d in plan.decode for rid, m in d.masters.items()}
    assert masters == {"a": 0, "c": 1}
    st.apply_plan(plan)
    assert st.waiting[0].req_id == "b" and st.waiting[0].prefill_len == 17  # recompute prompt+output


def test_masters_form_minibatches_on_instances_with_room():
    st = cluster([8, 8, 8])
    for n in range(6):
        make_running(st, 0, f"r{n}", {0: 16, 1: 16, 2: 16}, out=100)
    mgr = GlobalManager(cost_model())
    mgr.cfg.decode_minibatch = 2  # 6 requests -> 3 masters of 2
    plan = mgr.plan(st, 0.0)
    (d,) = plan.decode
    loads = sorted(list(d.masters.values()).count(i) for i in range(3))
    assert loads == [2, 2, 2]


def test_an_overloaded_master_hands_a_request_to_the_least_loaded_holder():
    from vllm_esp.planner.decode_plan import relieve_master

    free = {0: 5, 1: 5, 2: 5}
    # master 0 decodes 4 requests, minibatch 2: the holder with fewest requests takes it
    assert relieve_master({0: 4, 1: 3, 2: 1}, 0, [1, 0, 2], free, 2) == 2
    # within the mini-batch: stay
    assert relieve_master({0: 2, 1: 0}, 0, [1, 0], free, 2) is None
    # only holders of its KV are candidates, and they need a free block
    assert relieve_master({0: 4, 1: 0, 2: 0}, 0, [0, 2], {0: 5, 1: 5, 2: 0}, 2) is None
    # the move must leave the new master below the old one: never swaps back
    assert relieve_master({0: 3, 1: 2}, 0, [1, 0], free, 2) is None
    assert relieve_master({0: 3, 1: 1}, 0, [1, 0], free, 2) == 1
    # 0 turns it off
    assert relieve_master({0: 9, 1: 0}, 0, [1, 0], free, 0) is None
