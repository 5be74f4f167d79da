"""An engine whose every decision is made by a production planner policy.

This is the ESP engine of the simulator (and, with one instance per engine, a data-parallel
replica). Each iteration it calls ``policy.plan(state, now)`` on a real
``vllm_esp.planner.ClusterState``, charges the plan with the cost model, and advances the state
with ``ClusterState.apply_plan`` — the same mutation the engine scheduler uses, so the KV pool
is charged identically and an over-committing plan raises here just as it would in the engine.

Iteration time (lockstep, as the real executor runs one step over all instances)::

    T = Σ migration_time(tokens)                        (compaction happens first, serially)
      + max( prefill_time(k_b, Σl, Σl²)  for each prefill batch b,
             decode_time(k_d, batch, ctx) for each decode batch d )

computed here from the plan's contents and the state, *not* from ``plan.predicted_time``, so a
planner whose own estimate is wrong is still charged the model's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_esp.planner import ClusterState, CostModel, Instance, IterationPlan
from vllm_esp.planner import Request as PlannerRequest
from vllm_esp.simulator.batching_engine import client_max_tokens
from vllm_esp.simulator.core import Handoff, Progress
from vllm_esp.workloads.types import Request


@dataclass(slots=True)
class IterationRecord:
    """One simulated iteration (kept when ``keep_trace``; used by tests and debugging)."""

    start: float  # s
    end: float  # s
    prefill: list[tuple[tuple[int, ...], tuple[str, ...]]] = field(default_factory=list)
    decode: list[tuple[tuple[int, ...], int]] = field(default_factory=list)  # (instances, reqs)
    migrated_tokens: int = 0
    preempted: tuple[str, ...] = ()


def plan_time(plan: IterationPlan, state: ClusterState, cost: CostModel) -> float:
    """Seconds ``plan`` takes on ``state`` (before ``apply_plan``), per the module formula."""
    t_batches = 0.0
    for pb in plan.prefill:
        lens = [state.waiting_request(rid).prefill_len for rid in pb.req_ids]
        t = cost.prefill_time(len(pb.instances), sum(lens), sum(x * x for x in lens))
        t_batches = max(t_batches, t)
    for db in plan.decode:
        ctx = sum(state.running[rid].running_kv_tokens for rid in db.masters)
        t = cost.decode_time(len(db.instances), len(db.masters), ctx)
        t_batches = max(t_batches, t)
    t_mig = sum(cost.migration_time(m.num_tokens) for m in plan.migrations)
    return t_mig + t_batches


class PlannerEngine:
    """One scheduler over ``num_instances`` instances driven by a planner policy."""

    def __init__(self, name: str, policy, cost: CostModel, num_instances: int,
                 blocks_per_instance: int, block_size: int, keep_trace: bool = False,
                 validate: bool = False, max_tokens: int | None = None):
        self.name = name
        self.policy = policy
        self.cost = cost
        self.state = ClusterState(
            [Instance(i, blocks_per_instance) for i in range(num_instances)], block_size)
        self.trace: list[IterationRecord] | None = [] if keep_trace else None
        self._running_ids: list[str] = []  # requests touched by the iteration in flight
        self._prefilled: list[str] = []
        self.rejected: list[str] = []
        self.validate = validate  # check every plan with the planner's own validator (slow)
        self.max_tokens = max_tokens  # what clients send as max_tokens (None: each output)
        self._stop: dict[str, int] = {}  # req_id -> true output length (when it stops)

    def add(self, req: Request, now: float, state: object = None) -> None:
        rid = str(req.request_id)
        self._stop[rid] = req.output_len
        self.state.add_request(PlannerRequest(
            req_id=rid, prompt_len=req.prompt_len,
            max_output_len=client_max_tokens(req, self.max_tokens), arrival_time=req.arrival))

    def _runnable(self, plan: IterationPlan, planned_on: ClusterState, now: float) -> bool:
        """False if the plan runs nothing (its rejections are applied); checks it if asked."""
        if not (plan.prefill or plan.decode or plan.migrations or plan.preempted):
            if plan.rejected:
                self.state.apply_plan(plan)
            return False
        if self.validate:
            from vllm_esp.planner.validate import validate_plan

            errs = validate_plan(planned_on, plan)
            if errs:
                raise AssertionError(f"{self.name} at t={now:.6f}: invalid plan: {errs}")
        return True

    def _record(self, plan: IterationPlan, start: float, end: float) -> None:
        if self.trace is not None:
            self.trace.append(IterationRecord(
                start, end,
                [(tuple(pb.instances), tuple(pb.req_ids)) for pb in plan.prefill],
                [(tuple(db.instances), len(db.masters)) for db in plan.decode],
                sum(m.num_tokens for m in plan.migrations), tuple(plan.preempted)))

    def start(self, now: float) -> float | None:
        plan = self.policy.plan(self.state, now)
        if plan.rejected:
            self.rejected.extend(plan.rejected)
        if not self._runnable(plan, self.state, now):
            return None
        dur = plan_time(plan, self.state, self.cost)
        self._prefilled = [rid for pb in plan.prefill for rid in pb.req_ids]
        self._running_ids = self._prefilled + [rid for db in plan.decode for rid in db.masters]
        self.state.apply_plan(plan)
        end = now + max(dur, 1e-9)
        self._record(plan, now, end)
        return end

    def _account(self, prefilled: list[str], ran: list[str], now: float,
                 progress: Progress) -> None:
        """First tokens of ``prefilled``; finish what in ``ran`` reached its output length."""
        for rid in prefilled:
            progress.token(int(rid), now)
        for rid in ran:
            req = self.state.running.get(rid)
            if req is not None and req.output_len >= self._stop[rid]:
                progress.done(int(rid), now)
                self.state.finish(rid)
                del self._stop[rid]
                observe = getattr(self.policy, "on_finished", None)
                if observe is not None:
                    observe(req)
        for rid in self.rejected:
            progress.rejected.add(int(rid))

    def complete(self, now: float, progress: Progress) -> list[Handoff]:
        self._account(self._prefilled, self._running_ids, now, progress)
        self._prefilled, self._running_ids = [], []
        return []
