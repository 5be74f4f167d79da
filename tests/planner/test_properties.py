"""Property tests: random clusters and workloads, every policy, every iteration's plan valid."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_esp.planner import ClusterState, Instance, Request
from vllm_esp.planner.manager import ManagerConfig
from vllm_esp.planner.policies import make_policy
from vllm_esp.planner.validate import validate_plan

from .helpers import cost_model

request_st = st.tuples(st.integers(1, 300), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 20)),
                       st.integers(0, 5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(["esp", "static_sp", "replicas"]),
    blocks=st.lists(st.integers(1, 24), min_size=1, max_size=5),
    block_size=st.sampled_from([4, 16]),
    reqs=st.lists(request_st, min_size=1, max_size=12),
    minibatch=st.integers(1, 4),
    bandwidth=st.sampled_from([1e4, 1e9]),
)
def test_plans_never_overcommit_and_tokens_have_one_owner(policy, blocks, block_size, reqs, minibatch, bandwidth):
    state = ClusterState([Instance(i, b) for i, b in enumerate(blocks)], block_size)
    pol = make_policy(policy, cost_model(bandwidth=bandwidth), ManagerConfig(decode_minibatch=minibatch))
    pending = [Request(f"q{n}", p, o, arrival_time=float(t), predicted_output_len=pred)
               for n, (p, o, pred, t) in enumerate(reqs)]  # predictions may be wrong on purpose
    now = 0.0
    for step in range(60):
        while pending and pending[0].arrival_time <= step:
            state.add_request(pending.pop(0))
        plan = pol.plan(state, now)
        assert validate_plan(state, plan) == []
        paused = set(plan.paused_batch_ids)
        masters = [rid for d in plan.decode for rid in d.masters]
        for b in state.batches.values():  # every running request decodes once unless paused
            if b.batch_id in paused:
                continue
            for rid in b.req_ids:
                if rid not in plan.preempted and not any(
                        e.kind == "merge" and b.batch_id in e.merged_batch_ids and e.batch_id in paused
                        for e in plan.scale_events):
                    assert masters.count(rid) == 1
        for pb in plan.prefill:  # each prompt token kept by exactly one instance
            for rid in pb.req_ids:
                owners = sorted((k.begin, k.end) for k in pb.keep[rid])
                assert owners[0][0] == 0 and all(a[1] == b[0] for a, b in zip(owners, owners[1:]))
        state.apply_plan(plan)  # KVPool.add raises on any over-commit
        assert all(state.pool.used[i] <= state.pool.capacity[i] for i in state.pool.capacity)
        now += max(plan.predicted_time, 1e-3)
        for rid, r in list(state.running.items()):
            if r.output_len >= r.max_output_len:
                state.finish(rid)
        if not pending and not state.waiting and not state.running:
            break
    assert not state.running or step == 59
