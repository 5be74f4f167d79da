"""LoongServe's execution model around its ported scheduler (planner policy ``loongserve``).

``RouterManager._step`` in LoongServe's repository alternates two modes:

* **steps**: every decode batch runs one iteration and the router waits for all of them
  (lockstep); the policy's ``plan`` decides each step;
* **macro-iterations**: when the policy admits new requests, its plan holds prefill groups and
  decode batches that run *concurrently*, each independent group (one per prefill, one for all
  decode batches) on its own clock (``_dispatch_independ_batch_list``). After each of its
  iterations a group continues (``policy.continue_group``: decode again, or refill greedily
  once its requests have finished) while some macro prefill still runs; once none does, each
  group stops after its current iteration, and the next step starts when all have stopped.

The engine applies every plan with ``ClusterState.apply_plan`` like the other planner engines
and charges the cost model's times (migrations first, then the group's batches). KV is counted
in tokens (``block_size = 1``): LoongServe inherits LightLLM's token-granular KV cache. A group
whose instances share a batch with instances outside it (a paused batch merged into a new one)
waits for the next step.
"""

from __future__ import annotations

from vllm_esp.planner import IterationPlan
from vllm_esp.simulator.async_engine import AsyncPlannerEngine
from vllm_esp.simulator.core import Handoff, Progress


class LoongServeEngine(AsyncPlannerEngine):
    concurrent = True

    def __init__(self, name, policy, cost, num_instances, blocks_per_instance, block_size,
                 **kwargs):
        super().__init__(name, policy, cost, num_instances, blocks_per_instance * block_size,
                         1, **kwargs)
        self._macro = False  # inside a macro-iteration
        self._macro_end = 0.0  # s: when its longest predicted prefill ends
        self._prefills_left = 0  # macro prefill groups still running
        self._parked: list[frozenset[int]] = []  # groups done with their work for this macro
        self._prefill_groups: set[frozenset[int]] = set()  # in-flight macro prefill groups
        self._started: list[float] = []  # end times of groups continued in ``complete``

    # ---- starting work -----------------------------------------------------------------
    def start(self, now: float) -> list[float] | None:
        if self._macro:
            ends, self._started = self._started + self._refill(now), []
            return ends or None
        if self._groups:
            return None
        plan = self.policy.plan(self.state, now)
        if plan.rejected:
            self.rejected.extend(plan.rejected)
        if not self._runnable(plan, self.state, now):
            return None
        t0 = now + sum(self.cost.migration_time(m.num_tokens) for m in plan.migrations)
        ends = []
        if plan.prefill:
            self._macro, self._prefills_left, self._parked = True, len(plan.prefill), []
            self._macro_end = t0 + self.policy.macro_time
            for pb in plan.prefill:
                end = t0 + max(self._prefill_time(pb), 1e-9)
                self._groups.append((end, frozenset(pb.instances), list(pb.req_ids), []))
                self._prefill_groups.add(frozenset(pb.instances))
                ends.append(end)
        if plan.decode:
            end = t0 + max(max(self._decode_time(d) for d in plan.decode), 1e-9)
            insts = frozenset(i for d in plan.decode for i in d.instances)
            self._groups.append((end, insts, [], [r for d in plan.decode for r in d.masters]))
            ends.append(end)
        self.state.apply_plan(plan)
        self._record(plan, now, max(ends, default=t0))
        if not ends:  # only rejections, migrations or an offload: let the next event plan
            return [max(t0, now + 1e-9)]
        return ends

    def _prefill_time(self, pb) -> float:
        lens = [self.state.waiting_request(rid).prefill_len for rid in pb.req_ids]
        return self.cost.prefill_time(len(pb.instances), sum(lens), sum(x * x for x in lens))

    def _decode_time(self, d) -> float:
        ctx = sum(self.state.running[rid].running_kv_tokens for rid in d.masters)
        return self.cost.decode_time(len(d.instances), len(d.masters), ctx)

    def _continue(self, insts: frozenset[int], now: float) -> float | None:
        """The group on ``insts`` runs its next iteration inside the macro, if it has one."""
        closure = set(insts)
        for b in self.state.batches.values():
            if b.instances & closure:
                closure |= b.instances
        if closure & self._busy():
            return None
        view = self._view(set(i.instance_id for i in self.state.instances) - closure)
        plan: IterationPlan = self.policy.continue_group(view, now, self._macro_end - now)
        if not (plan.prefill or plan.decode):
            return None
        self._runnable(plan, view, now)
        pre = [rid for pb in plan.prefill for rid in pb.req_ids]
        t = max([self._prefill_time(pb) for pb in plan.prefill] +
                [self._decode_time(d) for d in plan.decode])
        dec = [r for d in plan.decode for r in d.masters]
        self.state.apply_plan(plan)
        end = now + max(t, 1e-9)
        self._record(plan, now, end)
        self._groups.append((end, frozenset(closure), pre, dec))
        return end

    def _refill(self, now: float) -> list[float]:
        """Parked groups whose requests all finished try a greedy refill (LoongServe polls
        every 10 ms while a macro prefill runs; here at every event)."""
        if self._prefills_left <= 0:
            return []
        ends = []
        for insts in list(self._parked):
            if any(b.instances & insts for b in self.state.batches.values()):
                continue
            end = self._continue(insts, now)
            if end is not None:
                self._parked.remove(insts)
                ends.append(end)
        return ends

    # ---- finishing work ----------------------------------------------------------------
    def complete(self, now: float, progress: Progress) -> list[Handoff]:
        done = [g for g in self._groups if g[0] <= now]
        self._groups = [g for g in self._groups if g[0] > now]
        for _, insts, prefilled, decoded in done:
            self._account(prefilled, prefilled + decoded, now, progress)
            if insts in self._prefill_groups:
                self._prefill_groups.discard(insts)
                self._prefills_left -= 1
        if self._macro:
            for _, insts, _, _ in done:
                end = self._continue(insts, now) if self._prefills_left > 0 else None
                if end is None:
                    self._parked.append(insts)
                else:
                    self._started.append(end)
            if not self._groups:
                self._macro, self._parked = False, []
        if not done:
            for rid in self.rejected:
                progress.rejected.add(int(rid))
        return []
