"""Baseline: static sequence parallelism — every batch always runs on all N instances.

What a ring-attention SP deployment without elasticity does: one ESP group of all instances,
prefill and decode alternate (a prefill iteration pauses the decode batch, as the group is
shared), and each instance keeps the KV of the tokens it computed — an even split of every
prompt, which is what striping gives. It uses the same admission rules as ESP (worst-case KV,
normalised slowdown, bounded prefill) but strictly in order (no out-of-order admission beyond the
head), and the same multi-master decoding over the whole group; only elasticity is missing.
"""

from __future__ import annotations

from ..cost_model import CostModel
from ..decode_plan import BatchView, PoolView, choose_masters, fix_shortage
from ..dispatch import DispatchInput, dispatch
from ..kv_pool import blocks_for
from ..manager import ManagerConfig
from ..state import ClusterState
from ..types import DecodeBatch, IterationPlan, KeepRange, PrefillBatch

BATCH_ID = 0  # the single decode batch


class StaticSPPolicy:
    name = "static_sp"

    def __init__(self, cost: CostModel, cfg: ManagerConfig | None = None):
        self.cost = cost
        self.cfg = cfg or ManagerConfig(out_of_order=False, compaction=False)

    def plan(self, state: ClusterState, now: float) -> IterationPlan:
        plan = IterationPlan()
        everyone = [i.instance_id for i in state.instances]
        view = PoolView(state.pool, {})
        free = {i: state.pool.free_blocks(i) for i in everyone}
        batch = None
        if BATCH_ID in state.batches:
            b = state.batches[BATCH_ID]
            batch = BatchView(BATCH_ID, set(everyone), list(b.req_ids))
            plan.preempted = fix_shortage(view, free, batch, [], [])
        running = {k: v for k, v in state.running.items() if k not in set(plan.preempted)}
        if batch is not None and not batch.req_ids:
            batch = None
        idle = [] if batch else everyone
        disp = dispatch(
            DispatchInput(state.waiting, running, free, idle, [batch] if batch else [],
                          sum(state.pool.capacity.values()), state.block_size, now),
            self.cost, self.cfg,
        )
        plan.rejected = disp.rejected
        admitted = self._fit_even_split(disp.admitted, everyone, free, state.block_size)
        if admitted:
            plan.prefill.append(self._prefill(admitted, everyone, free, state.block_size))
            if batch:
                plan.paused_batch_ids = [BATCH_ID]
        elif batch:
            masters = choose_masters(view, free, batch, -(-len(batch.req_ids) // len(everyone)))
            ctx = sum(sum(state.pool.placement.get(r, {}).values()) for r in batch.req_ids)
            t = self.cost.decode_time(len(everyone), len(batch.req_ids), ctx)
            plan.decode.append(DecodeBatch(BATCH_ID, everyone, masters, t))
        plan.predicted_time = max([p.predicted_time for p in plan.prefill + plan.decode], default=0.0)
        return plan

    @staticmethod
    def _shares(length: int, k: int) -> list[tuple[int, int]]:
        return [(j * length // k, (j + 1) * length // k) for j in range(k)]

    def _fit_even_split(self, admitted, insts, free, bs):
        """Drop the latest admitted requests until every instance can hold its shares."""
        admitted = list(admitted)
        while admitted:
            need = {i: 0 for i in insts}
            for r in admitted:
                for i, (b, e) in zip(insts, self._shares(r.prefill_len, len(insts))):
                    need[i] += blocks_for(e - b, bs)
            if all(need[i] <= free[i] for i in insts):
                return admitted
            admitted.pop()
        return admitted

    def _prefill(self, admitted, insts, free, bs) -> PrefillBatch:
        keep = {}
        for r in admitted:
            ranges = []
            for i, (b, e) in zip(insts, self._shares(r.prefill_len, len(insts))):
                if e > b:
                    ranges.append(KeepRange(i, b, e))
                    free[i] -= blocks_for(e - b, bs)
            keep[r.req_id] = ranges
        s1 = sum(r.prefill_len for r in admitted)
        s2 = sum(r.prefill_len ** 2 for r in admitted)
        t = self.cost.prefill_time(len(insts), s1, s2)
        return PrefillBatch(list(insts), [r.req_id for r in admitted], keep, t, BATCH_ID)
