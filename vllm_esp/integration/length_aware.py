"""Length-aware placement across instances (scheduler side; ``--esp-policy sjf|alise``).

Mixed into ``ESPScheduler``. With a length-aware policy each instance's scheduler estimates
every request's remaining execution time (ALISE's predicted output length, its progress and
the execution-time model: ``AliseScheduler.predicted_remaining``). The ESP scheduler sums
them per instance and

- dispatches a new request to the instance with the least predicted work among those with
  room for its prompt (``planner.placement.least_work_instance``), not only by free KV;
- each step, moves a request that still waits where it was placed to an instance with
  nothing waiting that would start it sooner (``planner.placement.reroute_waiting``; only
  requests that never ran move, with their prediction).

The decisions are the planner's; this module reads the instances for them.
"""

from __future__ import annotations

import math

from vllm.logger import init_logger
from vllm.v1.request import Request

from vllm_esp.integration.spanning import views
from vllm_esp.planner.placement import least_work_instance, reroute_waiting

logger = init_logger(__name__)

LENGTH_AWARE_POLICIES = ("sjf", "alise")


class LengthAwareMixin:
    def _init_length_aware(self) -> None:
        self.length_aware = self.esp.policy in LENGTH_AWARE_POLICIES and \
            len(self.instances) > 1 and \
            all(hasattr(s, "predicted_remaining") for s in self.instances)
        self._work: dict[int, float] | None = None  # predicted work per instance, this step

    def _predicted_work(self) -> dict[int, float]:
        """Seconds of work predicted left per instance (cached for one step; dispatches add
        their requests' estimates as they go)."""
        if self._work is None:
            self._work = {i: sum(self._estimate(s, rid) for rid in s.requests
                                 if not self.spans.is_shadow(rid))
                          for i, s in enumerate(self.instances)}
        return self._work

    @staticmethod
    def _estimate(scheduler, request_id: str) -> float:
        seconds = scheduler.predicted_remaining(request_id)
        return seconds if seconds is not None and math.isfinite(seconds) else 0.0

    def _choose_by_work(self, request: Request, among: list[int] | None) -> int:
        order = self.pool.in_turn(among)
        headroom = {i: self.pool.headroom(i) for i in order}
        chosen = least_work_instance(order, self._predicted_work(), headroom,
                                     self.pool.blocks_for(request.num_tokens + 1))
        self.pool.took(chosen)
        return chosen

    def _count_work(self, request: Request, instance: int) -> None:
        """A request was just added to ``instance``: its estimate joins the step's sums."""
        if self._work is not None:
            self._work[instance] += self._estimate(self.instances[instance],
                                                   request.request_id)

    def _reroute_waiting(self) -> None:
        work = self._predicted_work()
        heads, takers = {}, {}
        for i in self.pool.live():
            s = self.instances[i]
            if not s.waiting and not s.kv_holding_waiting:
                if i not in self.spans.reserved and len(s.running) < s.max_num_running_reqs:
                    takers[i] = self.spans.spare_blocks(i)
                continue
            head = next(iter(s.waiting), None)
            if head is None or not self._movable(s, head):
                continue
            heads[i] = (head, self._estimate(s, head.request_id),
                        self.pool.blocks_for(head.num_tokens + 1))
        if not heads or not takers:
            return
        ids = {i: (r.request_id, t, b) for i, (r, t, b) in heads.items()}
        for rid, src, dst in reroute_waiting(work, ids, takers):
            request = heads[src][0]
            views.move_waiting(self.instances[src], self.instances[dst], request)
            self.pool.assign(rid, dst)
            seconds = heads[src][1]
            work[src] -= seconds
            work[dst] += seconds
            self.stats.rerouted += 1
            logger.debug("ESP: request %s waits no longer on instance %d: moved to %d "
                         "(predicted work %.3f s there)", rid, src, dst, work[dst])

    def _movable(self, scheduler, request: Request) -> bool:
        rid = request.request_id
        return views.can_move(scheduler, request) and not self.spans.is_shadow(rid) \
            and not self.spans.is_spanning(rid) and rid not in self.resume_outputs
