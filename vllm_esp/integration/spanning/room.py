"""Room for a parallel prefill: will every holder's stock scheduler run its whole chunk in
the next step? (A chunk computed without its earlier chunks' KV would be wrong, so a parallel
prefill is admitted only when all its chunks run in one step.)"""

from __future__ import annotations

from vllm.v1.request import Request

from vllm_esp.integration.spanning import views
from vllm_esp.integration.spanning.request import SpanningRequest


class RoomChecks:
    """Mixed into ``SpanManager``: reads its schedulers, pool, reserved and busy instances."""

    def blocks_for_parallel_prefill(self) -> dict[int, int]:
        """Free blocks (after their running requests' next step), by instance, of the
        instances that could take part in a parallel prefill next step: not reserved, only
        decodes running, no KV-holding request queued."""
        spare = {i: self.spare_blocks(i) for i in range(len(self.schedulers))
                 if self.idle_for_parallel_prefill(i)}
        return {i: n for i, n in spare.items() if n > 0}  # a helper holds its chunk's blocks

    def idle_for_parallel_prefill(self, i: int, pending: frozenset[str] = frozenset()) -> bool:
        """Not reserved by another parallel prefill, only decodes running (no chunked
        prefill competes for the budget), no KV-holding request queued ahead. ``pending``:
        the views of the parallel prefills being joined; their reservation and queued chunks
        are allowed (the caller counts them in the budget). An instance in the middle of a
        step qualifies: the chunks wait in its queue, and the spread request links it to the
        other holders, so all of them start their next step together when the last is free
        (LoongServe's macro-iteration: the group is reserved for the ring)."""
        sched = self.schedulers[i]
        return not (
            (i in self.reserved and not pending)
            or any(r.request_id not in pending for r in sched.kv_holding_waiting)
            or any(r.num_computed_tokens < r.num_tokens - 1 for r in sched.running))

    def spare_blocks(self, i: int) -> int:
        """Free blocks after the running requests' next step and the queued requests' need."""
        return self.pool.free_blocks(i) - self.blocks_needed(i) - self.pool.pending_demand(i)

    def blocks_needed(self, i: int) -> int:
        """New blocks the running requests of instance ``i`` take if all are scheduled. On an
        instance in the middle of a step each running request counts one more token (the
        token its step is sampling is not appended yet)."""
        sched, need = self.schedulers[i], 0
        mid_step = i in self.busy
        for r in sched.running:
            todo = min(r.num_tokens - r.num_computed_tokens, sched.max_num_scheduled_tokens)
            if mid_step:
                todo = max(todo, 1)
            need += max(0, self.pool.blocks_for(r.num_computed_tokens + todo)
                        - views.held_blocks(sched, r.request_id))
        return need

    def outgrows_one_pool(self, request: Request) -> bool:
        need = self.pool.blocks_for(request.num_tokens + 1)
        return need > max(self.pool.total_blocks(i) for i in range(self.pool.num_instances))

    def fits_master(self, span: SpanningRequest) -> bool:
        """Can the master keep the whole prompt? Then the prefill runs as a ring over all the
        holders and stores everything on the master (LoongServe's proactive migration): the
        others are free again after one step and the decode needs no remote attention."""
        return self.ring_possible(span) and \
            self.pool.blocks_for(span.request.num_tokens + 1) <= self.spare_blocks(span.master)

    def ring_possible(self, span: SpanningRequest) -> bool:
        """Rings are on, there is more than one holder, and no prompt logprobs (a ring
        computes rows out of prompt order)."""
        params = span.request.sampling_params
        return (self.ring_prefill and len(span.holders) > 1
                and (params is None or params.prompt_logprobs is None))

    def pending_parallel(self) -> list[SpanningRequest]:
        """Parallel prefills admitted (chunks queued, holders reserved) but not run yet."""
        return [s for s in self.spans.values() if s.parallel and not s.prefilled]

    def room_for_parallel_prefill(self, span: SpanningRequest, join: bool = False) -> bool:
        """Only decodes are running on every holder, no other KV-holding request is queued
        ahead, the chunk fits the token budget, a request slot and the free blocks, and chunk
        0 goes to the front of the waiting queue and stays there (FCFS, or pinned ahead of a
        length-aware order). ``join``: the chunks of the parallel prefills
        not run yet share the step (and are counted)."""
        ahead: dict[int, list[int]] = {}  # instance -> sizes of pending chunks there
        pending_views: set[str] = set()
        for other in (self.pending_parallel() if join else ()):
            for i, size, view in zip(other.holders, other.chunk_sizes, other.views):
                ahead.setdefault(i, []).append(size)
                pending_views.add(view.request_id)
        pending = frozenset(pending_views)
        for j, (i, size) in enumerate(zip(span.holders, span.chunk_sizes)):
            sched = self.schedulers[i]
            threshold = sched.scheduler_config.long_prefill_token_threshold
            others = ahead.get(i, [])
            if (not self.idle_for_parallel_prefill(i, pending)
                    # chunk 0 holds no KV: it must stay at the head of the waiting queue
                    # while requests keep arriving (vLLM's priority heap would reorder it)
                    or (j == 0 and not views.keeps_front(sched))
                    or size + sum(others) + len(sched.running) > sched.max_num_scheduled_tokens
                    or (threshold and size > threshold)
                    or len(sched.running) + 1 + len(others) > sched.max_num_running_reqs
                    or self.pool.blocks_for(size) + sum(map(self.pool.blocks_for, others))
                    + self.blocks_needed(i) > self.pool.free_blocks(i)):
                return False
        return True
