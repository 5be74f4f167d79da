"""New requests into the ESP engine: which instance, which ring, or wait (scheduler side).

Mixed into ``ESPScheduler``. Without a cost profile a request goes to the instance with most
free KV (``DistributedKVPool.choose_instance``) and only prompts larger than one pool (or
hinted ones) are spread. With a profile, the requests that arrived since the last step are
planned together by the global manager's batching step (``planner.prefill_groups``): a group
on one instance is dispatched there, a group on k > 1 instances is prefilled by one ring over
them. With ``--esp-admission manager`` the manager's dispatching rules decide when they start.
"""

from __future__ import annotations

import time

from vllm.logger import init_logger
from vllm.v1.request import Request, RequestStatus

from vllm_esp.integration import cluster
from vllm_esp.integration.span_support import request_blockers
from vllm_esp.planner.prefill_groups import MAX_REQUESTS_PER_STEP

logger = init_logger(__name__)


class ArrivalsMixin:
    def _plan_arrivals(self) -> None:
        """The global manager's batching step over the requests that arrived since the last
        step (``PrefillPlanner.plan``): a group on one instance is dispatched there, a group
        on k > 1 instances is prefilled by one ring over them. Rings are set up first, so
        their chunks are queued ahead of plain requests; plain requests keep their arrival
        order on each instance (vLLM's FCFS)."""
        batch = self._admit_arrivals()
        if not self.spans.enabled:
            batch, whole = [], batch
        else:
            whole = [r for r in batch if request_blockers(r)]  # never in a ring: one instance
            batch = [r for r in batch if not request_blockers(r)]
        for r in whole:
            self._dispatch(r)
        if not batch:
            return
        spare = self.spans.blocks_for_parallel_prefill()
        if len(spare) < 2:  # nothing to plan over: most headroom, as without a profile
            groups, left = [], list(range(len(batch)))
        else:
            groups, left = self.prefill_planner.plan([r.num_tokens for r in batch],
                                                     list(spare.values()))
        plain: dict[int, list[int] | None] = {r: None for r in left}
        ids = list(spare)
        for g in groups:
            instances = [ids[i] for i in g.instances]
            self.stats.planned_prefill_instances[len(instances)] += len(g.prompts)
            if len(instances) > 1:
                ringless = self._prefill_together([batch[r] for r in g.prompts], instances)
                plain.update({r: instances for r in g.prompts if batch[r] in ringless})
            else:
                plain.update({r: instances for r in g.prompts})
        if left:
            self.stats.planned_prefill_instances[1] += len(left)
        for r in sorted(plain):
            self._dispatch(batch[r], plain[r])

    def _admit_arrivals(self) -> list[Request]:
        """The new requests that start this step (taken off ``arrivals``): the first ones,
        or those the manager's dispatching rules admit (the rest keep waiting)."""
        if self.admission is None:
            batch = self.arrivals[:MAX_REQUESTS_PER_STEP]
            del self.arrivals[:MAX_REQUESTS_PER_STEP]
            return batch
        spare = cluster.spare_blocks(self.spans, self.pool.num_instances)
        capacity = cluster.pool_blocks(self.pool)
        batch, rejected = self.admission.admit(self.arrivals, self._live_requests(), spare,
                                               capacity, time.time())
        for r in rejected:
            logger.error("request %s (%d tokens) can never fit the ESP pools; finishing it "
                         "with an error", r.request_id, r.num_tokens)
        taken = {r.request_id for r in batch + rejected}
        self.arrivals = [r for r in self.arrivals if r.request_id not in taken]
        self.rejected.extend(rejected)
        return batch

    def _live_requests(self) -> list[Request]:
        """Requests admitted and not finished (each once: not the spans' shadow views)."""
        live = [r for s in self.instances for r in s.requests.values()
                if not self.spans.is_shadow(r.request_id)]
        return live + self.pending_spans

    def _prefill_together(self, requests: list[Request], instances: list[int]) -> list[Request]:
        """One ring over ``instances`` prefills ``requests``, each keeping its KV on the
        ring's master; the longest opens the ring, the others join it. Returns those that
        cannot take part (too short for a chunk per instance, no room on the master)."""
        ring: tuple[int, ...] | None = None
        ringless = []
        for request in sorted(requests, key=lambda r: -r.num_tokens):
            master = self.spans.add(request, among=instances, prefill_k=len(instances),
                                    join=[ring] if ring is not None else None)
            if master is None:
                ringless.append(request)
                continue
            self._assign(request, master)
            span = self.spans.spans[request.request_id]
            if ring is None and span.parallel:
                ring = tuple(span.holders)
        return ringless

    def _dispatch(self, request: Request, among: list[int] | None = None) -> None:
        """A request on one instance, ``among`` these: the least predicted work with room
        for it under a length-aware policy (``length_aware.py``), else the pool's choice
        (most headroom)."""
        if self.length_aware:
            instance = self._choose_by_work(request, among)
        else:
            instance = self.pool.choose_instance(request, among)
        self._assign(request, instance)
        self.stats.prefill_instances[1] += 1
        self.instances[instance].add_request(request)
        if self.length_aware:
            self._count_work(request, instance)

    def _assign(self, request: Request, instance: int) -> None:
        """Record where the request runs; a request placed again after a preemption was
        dispatched once already."""
        self.pool.assign(request.request_id, instance)
        if request.request_id in self._placed_again:
            self._placed_again.discard(request.request_id)
        else:
            self.stats.dispatched[instance] += 1

    def _never_fits(self, request: Request) -> bool:
        """Even with every pool idle, the whole request must fit the sum of the pools."""
        return request.num_tokens + request.max_tokens > self.pool_capacity_tokens()

    def pool_capacity_tokens(self) -> int:
        return sum(self.pool.total_blocks(i) for i in range(self.pool.num_instances)) \
            * self.pool.block_size

    def _admit_spans(self) -> None:
        """Place waiting spanning requests, oldest first, while the pools have room."""
        while self.pending_spans:
            request = self.pending_spans[0]
            try:
                instance = self.spans.add(request)
            except ValueError:  # not enough free blocks now: wait for requests to finish
                return
            self.pending_spans.pop(0)
            if instance is None:  # a parallel prefill was only asked for: run it plainly
                self._dispatch(request)
                continue
            self._assign(request, instance)

    def _take_unplaced(self, request_ids, status: RequestStatus) -> list[Request]:
        """Finish requests the instances never saw (new arrivals, pending or rejected spans)."""
        taken = []
        for queue in (self.arrivals, self.pending_spans, self.rejected):
            keep = []
            for r in queue:
                if request_ids is None or r.request_id in request_ids:
                    r.status = status
                    self._placed_again.discard(r.request_id)
                    taken.append(r)
                else:
                    keep.append(r)
            queue[:] = keep
        return taken

    def dispatch_again(self, request: Request) -> None:
        """A request taken off an instance (lost): placed again like a new one."""
        self._placed_again.add(request.request_id)
        if self.spans.needs_span(request):
            self.pending_spans.insert(0, request)
        else:
            self._dispatch(request)

    def fits_live_pools(self, request: Request) -> bool:
        live = [i for i in range(self.pool.num_instances) if i not in self.pool.dead]
        need = self.pool.blocks_for(request.num_tokens + 1)
        if not self.spans.enabled or request_blockers(request):
            return any(need <= self.pool.total_blocks(i) for i in live)
        return need <= sum(self.pool.total_blocks(i) for i in live)

    def place_span_again(self, view_id: str) -> None:
        """Drop every view of a spanning request and place it again from scratch."""
        real = self.spans.take_back(view_id)
        if real is not None:
            self.pool.forget(real.request_id)
            self.pending_spans.insert(0, real)
            self._placed_again.add(real.request_id)
