"""Plan invariants, checked against the state the plan was made from.

Used by the property tests and cheap enough for the engine to assert in debug runs. Returns a
list of human-readable violations (empty when the plan is valid).
"""

from __future__ import annotations

from .kv_pool import blocks_for
from .state import ClusterState
from .types import IterationPlan


def validate_plan(state: ClusterState, plan: IterationPlan) -> list[str]:
    errs: list[str] = []
    busy = plan.busy_instances()
    if len(busy) != len(set(busy)):
        errs.append(f"an instance is in two batches: {sorted(busy)}")
    waiting = {r.req_id: r for r in state.waiting}
    preempted = set(plan.preempted)
    for pb in plan.prefill:
        group = set(pb.instances)
        for rid in pb.req_ids:
            req = waiting.get(rid)
            if req is None:
                errs.append(f"prefill of {rid}, which is not waiting")
                continue
            covered = sorted((k.begin, k.end) for k in pb.keep.get(rid, []))
            pos = 0
            for b, e in covered:
                if b != pos or e <= b:
                    errs.append(f"{rid}: keep ranges {covered} do not tile [0, {req.prefill_len})")
                    break
                pos = e
            else:
                if pos != req.prefill_len:
                    errs.append(f"{rid}: keep ranges end at {pos}, prefill_len {req.prefill_len}")
            if any(k.instance_id not in group for k in pb.keep.get(rid, [])):
                errs.append(f"{rid}: keeps KV outside its ESP group")
    decoding = [rid for d in plan.decode for rid in d.masters]
    if len(decoding) != len(set(decoding)):
        errs.append("a request decodes twice in one iteration")
    for d in plan.decode:
        b = state.batches.get(d.batch_id)
        for rid, m in d.masters.items():
            if m not in d.instances:
                errs.append(f"{rid}: master {m} not in batch {d.batch_id}")
            if rid in preempted or rid not in state.running:
                errs.append(f"{rid}: decodes but is not running")
        if b is not None and not set(b.req_ids) - preempted <= set(d.masters) | _merged_reqs(state, plan, d.batch_id):
            errs.append(f"batch {d.batch_id}: a running request has no master")
    paused = set(plan.paused_batch_ids)
    for rid in state.running:
        if rid in preempted:
            continue
        bid = next((b.batch_id for b in state.batches.values() if rid in b.req_ids), None)
        if bid not in paused and decoding.count(rid) != 1 and not _in_merged_paused(state, plan, rid):
            errs.append(f"{rid}: running, batch not paused, but {decoding.count(rid)} masters")
    errs += _check_blocks(state, plan)
    return errs


def _merged_reqs(state, plan, bid) -> set[str]:
    out: set[str] = set()
    for ev in plan.scale_events:
        if ev.kind == "merge" and ev.batch_id == bid:
            for other in ev.merged_batch_ids:
                if other in state.batches:
                    out |= set(state.batches[other].req_ids)
    return out


def _in_merged_paused(state, plan, rid) -> bool:
    for ev in plan.scale_events:
        if ev.kind == "merge" and ev.batch_id in plan.paused_batch_ids:
            for other in ev.merged_batch_ids:
                if other in state.batches and rid in state.batches[other].req_ids:
                    return True
    return False


def _check_blocks(state: ClusterState, plan: IterationPlan) -> list[str]:
    """Replay the plan's KV effects on block counters only; report any over-commit."""
    bs = state.block_size
    tokens = {rid: dict(where) for rid, where in state.pool.placement.items()}
    for rid in plan.preempted:
        tokens.pop(rid, None)
    for m in plan.migrations:
        t = tokens[m.req_id]
        t[m.src] -= m.num_tokens
        t[m.dst] = t.get(m.dst, 0) + m.num_tokens
    for pb in plan.prefill:
        for rid, ranges in pb.keep.items():
            t = tokens.setdefault(rid, {})
            for k in ranges:
                t[k.instance_id] = t.get(k.instance_id, 0) + k.num_tokens
    for d in plan.decode:
        for rid, m in d.masters.items():
            t = tokens[rid]
            t[m] = t.get(m, 0) + 1
    used = {i: 0 for i in state.pool.capacity}
    for where in tokens.values():
        for i, t in where.items():
            used[i] += blocks_for(t, bs)
    return [f"instance {i}: {used[i]} blocks > {c}" for i, c in state.pool.capacity.items() if used[i] > c]
