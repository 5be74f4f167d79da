"""End-to-end plans of the manager and the baselines on hand-checkable clusters."""

from vllm_esp.planner.manager import GlobalManager
from vllm_esp.planner.policies import make_policy
from vllm_esp.planner.validate import validate_plan

from .helpers import cluster, cost_model, req


def test_request_larger_than_any_instance_gets_multi_instance_keep_plan():
    # 3 instances × 10 blocks × 16 tokens = 160 tokens each; a 400-token prompt needs 25 blocks.
    st = cluster([10, 10, 10])
    st.add_request(req("big", 400, 10))
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    assert validate_plan(st, plan) == []
    (pb,) = plan.prefill
    assert sorted(pb.instances) == [0, 1, 2]
    ranges = [(k.begin, k.end) for k in pb.keep["big"]]
    assert ranges == [(0, 160), (160, 320), (320, 400)]
    assert len({k.instance_id for k in pb.keep["big"]}) == 3
    st.apply_plan(plan)
    assert sorted(st.pool.placement["big"].values()) == [80, 160, 160]
    # replicas cannot pool memory: the same request is rejected there
    st2 = cluster([10, 10, 10])
    st2.add_request(req("big", 400, 10))
    assert make_policy("replicas", cost_model()).plan(st2, 0.0).rejected == ["big"]


def test_short_and_long_requests_prefill_concurrently_on_disjoint_groups():
    # Same hand computation as test_batching: 100 and 10000 tokens on 2 roomy instances split.
    st = cluster([1000, 1000])
    st.add_request(req("short", 100, 5))
    st.add_request(req("long", 10000, 5))
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    assert validate_plan(st, plan) == []
    assert sorted((p.req_ids[0], len(p.instances)) for p in plan.prefill) == [("long", 1), ("short", 1)]
    assert len({p.decode_batch_id for p in plan.prefill}) == 2


def test_scale_down_after_prefill_leaves_empty_instances_idle():
    st = cluster([100, 100, 100, 100])
    st.add_request(req("r", 3000, 5))  # 188 blocks: two instances keep KV, prefill on more
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    (pb,) = plan.prefill
    kept = {k.instance_id for k in pb.keep["r"]}
    assert len(kept) == 2 and len(pb.instances) >= 2
    st.apply_plan(plan)
    assert set(st.idle_instances()) == set(range(4)) - kept


def test_static_sp_uses_every_instance_and_splits_kv_evenly():
    st = cluster([10, 10, 10, 10])
    st.add_request(req("a", 100, 5))
    pol = make_policy("static_sp", cost_model())
    plan = pol.plan(st, 0.0)
    assert validate_plan(st, plan) == []
    (pb,) = plan.prefill
    assert pb.instances == [0, 1, 2, 3]
    assert [(k.instance_id, k.begin, k.end) for k in pb.keep["a"]] == [
        (0, 0, 25), (1, 25, 50), (2, 50, 75), (3, 75, 100)]
    st.apply_plan(plan)
    plan = pol.plan(st, 0.0)
    assert plan.decode[0].instances == [0, 1, 2, 3]


def test_replicas_round_robin_and_stay_home():
    st = cluster([10, 10])
    for n in range(4):
        st.add_request(req(f"r{n}", 20, 5))
    pol = make_policy("replicas", cost_model())
    plan = pol.plan(st, 0.0)
    homes = {rid: p.instances[0] for p in plan.prefill for rid in p.req_ids}
    assert homes == {"r0": 0, "r1": 1, "r2": 0, "r3": 1}
    st.apply_plan(plan)
    plan = pol.plan(st, 0.0)
    assert {d.batch_id: sorted(d.masters) for d in plan.decode} == {0: ["r0", "r2"], 1: ["r1", "r3"]}
