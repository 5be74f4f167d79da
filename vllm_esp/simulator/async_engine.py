"""ESP with asynchronous instance groups: each batch runs on its own clock (LoongServe-style).

The lockstep ``PlannerEngine`` models an executor that runs one step over all instances at a
time, so a 30-second prefill on two instances also stalls every decode batch on the other
instances. LoongServe instead lets each ESP group proceed independently; the manager is
invoked whenever instances free up and plans only for those. This engine simulates that with
the *unchanged* production policy:

* in-flight batches own their instances until their own end time (decode batches: one decode
  iteration; prefill batches: the prefill, plus this plan's migrations);
* at every event the policy is called on a *view* of the cluster holding only the idle
  instances, the decode batches living entirely on them, their KV, and the whole waiting
  queue; its plan is applied to the full state (same ``apply_plan``, same KV accounting);
* a rejection decided on a partial view is ignored (a request too big for the idle part may
  fit the whole pool); rejections count only when every instance is idle.

The view is rebuilt per call, sharing (not copying) placements: policies only read state.
"""

from __future__ import annotations

from vllm_esp.planner import ClusterState
from vllm_esp.simulator.core import Handoff, Progress
from vllm_esp.simulator.planner_engine import PlannerEngine


class AsyncPlannerEngine(PlannerEngine):
    concurrent = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # in-flight groups: (end time, instances, prefilled req ids, decoded req ids)
        self._groups: list[tuple[float, frozenset[int], list[str], list[str]]] = []

    def _busy(self) -> set[int]:
        return {i for _, insts, _, _ in self._groups for i in insts}

    def _view(self, busy: set[int]) -> ClusterState:
        return self.state.view_of({i.instance_id for i in self.state.instances} - busy)

    def start(self, now: float) -> list[float] | None:
        busy = self._busy()
        if len(busy) == len(self.state.instances):
            return None
        view = self._view(busy)
        plan = self.policy.plan(view, now)
        if busy:
            plan.rejected = []
        elif plan.rejected:
            self.rejected.extend(plan.rejected)
        if not self._runnable(plan, view, now):
            return None
        waiting = self.state.waiting_request
        t_mig = sum(self.cost.migration_time(m.num_tokens) for m in plan.migrations)
        new = []
        for pb in plan.prefill:
            lens = [waiting(rid).prefill_len for rid in pb.req_ids]
            t = self.cost.prefill_time(len(pb.instances), sum(lens), sum(x * x for x in lens))
            new.append((now + t_mig + max(t, 1e-9), frozenset(pb.instances), list(pb.req_ids),
                        []))
        for db in plan.decode:
            ctx = sum(self.state.running[rid].running_kv_tokens for rid in db.masters)
            t = self.cost.decode_time(len(db.instances), len(db.masters), ctx)
            new.append((now + t_mig + max(t, 1e-9), frozenset(db.instances), [],
                        list(db.masters)))
        self.state.apply_plan(plan)
        self._record(plan, now, max((g[0] for g in new), default=now))
        if not new:  # only migrations / preemptions: let the next event re-plan
            return [now + max(t_mig, 1e-9)]
        self._groups += new
        return [g[0] for g in new]

    def complete(self, now: float, progress: Progress) -> list[Handoff]:
        done = [g for g in self._groups if g[0] <= now]
        self._groups = [g for g in self._groups if g[0] > now]
        for _, _, prefilled, decoded in done:
            self._account(prefilled, prefilled + decoded, now, progress)
        if not done:
            for rid in self.rejected:
                progress.rejected.add(int(rid))
        return []
