"""Requests whose KV is spread over several instances: contiguous chunks, elastic decode.

A request's tokens are split into contiguous, block-aligned chunks; chunk ``j`` is stored on
``holders[j]`` and the last holder (the *master*) runs the real request: prefill of the last
chunk, sampling, outputs and decode steps (its new tokens' KV lands there). A token's KV lives
on exactly one instance (no replication).

Each chunk is computed by the stock vLLM scheduler of its instance through a *local view*:

- chunks before the master's are *shadow* requests (prompt = the tokens up to the chunk's
  end, ``max_tokens`` unbounded) whose garbage sample is dropped; once its chunk is prefilled
  a shadow is *parked* (taken off its scheduler's running list, blocks kept) until the real
  request finishes. Parking the prefill shadows is the *scale-down* after prefill;
- a view of chunk ``j > 0`` starts with ``num_computed_tokens = begin_j`` and null blocks for
  that prefix (the KV-transfer admission path of vLLM's scheduler), so the runner computes
  exactly the chunk with global positions and writes its KV into real local blocks.

Elasticity:

- *placement*: a request spans when its prompt does not fit any single instance's pool; the
  master gets the tail, the prefix fills the others (most free blocks first);
- *scale-up*: when a decoding request needs a new block and its master has none left while
  another instance has, the master's blocks are handed to a parked shadow and the real request
  continues on that instance (``migrate``); the new master's runner gets the tokens produced so
  far through the plan. Nothing is copied and nothing is recomputed;
- *recompute*: if a stock scheduler preempts a view (only when its instance is full and no
  other instance had room), every view is dropped and the real request is placed again from
  scratch, exactly like vLLM's recompute preemption.

Prefill is sequence-parallel when the holders have room for it this step: every chunk's view
is scheduled in the same step. By default it runs as LoongServe's striped ring
(``ops.plan.RingPrefill``): each holder computes an interleaved stripe of the prompt (as many
rows as its chunk has), the stripes' K/V travel around the ring once per layer, and each holder
keeps the visiting K/V of its own chunk (keep range) in its cache. When a prefix-cache hit
shortens a chunk, or prompt logprobs need the rows in prompt order, each instance computes its
own chunk instead and, layer by layer, sends its queries to the holders of the earlier chunks
(partial attention + LSE merge). When the holders are busy, the chunks run one after another
with that same query exchange. Keep ranges (what is stored where) are contiguous chunks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from vllm.logger import init_logger
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request, RequestStatus

from vllm_esp.hints import requested
from vllm_esp.integration.span_support import request_blockers
from vllm_esp.ops.plan import (
    ESPStepPlan,
    PeerChunk,
    RingMember,
    RingPrefill,
    SpanAttention,
    ring_groups,
    stripes,
)

logger = init_logger(__name__)

SHADOW_SUFFIX = "#esp-chunk"


@dataclass
class SpanningRequest:
    request: Request  # the real request (run by the master, the last holder)
    holders: list[int]  # instance of each chunk, in token order; master last
    # chunk j = tokens [bounds[j], bounds[j+1]); the master's chunk also takes every token
    # after bounds[-1] (its decode tokens)
    bounds: list[int]
    views: list[Request] = field(default_factory=list)  # local view per started chunk
    parked: list[bool] = field(default_factory=list)  # shadow j holds its chunk, runs no more
    # tokens the new master's runner has not seen (sent once with the plan, then None)
    outputs_to_send: list[int] | None = None
    parallel: bool = False  # all chunks prefilled in one step (sequence parallel)
    prefilled: bool = False  # the parallel prefill step has been scheduled
    # a ring prefill whose KV all goes to the master (its keep range is the whole prompt):
    # the other holders only compute (their shadows keep nothing, cache nothing) and leave
    # right after the prefill step; the request then decodes as a plain request
    keep_on_master: bool = False

    @property
    def master(self) -> int:
        return self.holders[-1]

    @property
    def chunk_sizes(self) -> list[int]:
        return [e - b for b, e in zip(self.bounds, self.bounds[1:])]

    @property
    def stage(self) -> int:
        """Index of the most recently started chunk."""
        return len(self.views) - 1


def requested_instances(request: Request, key: str = "esp_instances") -> int:
    """Instances the client asked for (1 = let ESP decide). ``esp_instances``: the prompt's KV
    is spread over k instances; ``esp_prefill_instances``: k instances prefill it (a ring) and
    the KV stays on one instance when it fits there. (The API server refused bad values.)"""
    return requested(request.sampling_params.extra_args if request.sampling_params else None,
                     key)


def requested_prefill_instances(request: Request) -> int:
    return requested_instances(request, "esp_prefill_instances")


class SpanManager:
    def __init__(self, schedulers: list, pool, block_size: int, parallel_prefill: bool = True,
                 ring_prefill: bool = True, batch_rings: bool = True, enabled: bool = True):
        self.schedulers = schedulers
        # False: this model's attention cannot be spread correctly (span_support): every
        # request runs whole on one instance, hints are served unspread, no scale-up
        self.enabled = enabled
        self.pool = pool
        self.block_size = block_size
        self.parallel_prefill = parallel_prefill
        self.ring_prefill = ring_prefill  # parallel prefills as a striped ring when possible
        self.batch_rings = batch_rings  # a request may join a pending ring (same holders)
        self._rings_now: list[SpanningRequest] = []  # ring prefills of the step being planned
        # request id -> instances the global manager gave its prefill (KV kept on one if it fits)
        self.planned_prefill: dict[str, int] = {}
        # request id -> the instances the global manager gave its prefill ring
        self.planned_instances: dict[str, list[int]] = {}
        # request id -> holders of the pending rings the global manager let it join
        self.rings_to_join: dict[str, list[tuple[int, ...]]] = {}
        self.reserved: set[int] = set()  # instances holding a parallel prefill not yet run
        # instances running a step: the scheduler's live in-flight map (only `in` is used)
        self.busy: frozenset[int] | dict = frozenset()
        self.spans: dict[str, SpanningRequest] = {}  # real request id -> span
        self.view_of: dict[str, tuple[str, int]] = {}  # view request id -> (real id, chunk)
        # cumulative counters for /metrics
        self.num_spanning = 0  # requests whose KV was spread over several instances
        self.num_scale_up = 0  # decodes continued on an added instance
        self.num_merge = 0  # of those, onto an instance running decodes of its own (merge)
        self.num_master_moves = 0  # decodes moved off a master running too many (relieve)
        self.num_scale_down = 0  # instances released by a request after its prefill chunk
        self.num_recompute = 0  # spanning requests preempted and placed again
        self.prefill_instances: Counter[int] = Counter()  # instances used per prefill
        self.num_parallel_prefills = 0  # spanning prefills run over all holders at once
        self.num_ring_prefills = 0  # of those, run as a striped ring
        self.num_batched_ring_prefills = 0  # of those, sharing their ring with other requests

    # ---- admission --------------------------------------------------------------------
    def needs_span(self, request: Request) -> bool:
        """Its prompt (and the first new token) does not fit any single instance's pool, or
        the client asked for it (``extra_args={"esp_instances": k}``)."""
        if not self.enabled or self.pool.num_instances < 2 or request.sampling_params is None:
            return False
        blockers = request_blockers(request)
        if blockers:  # served whole on one instance, as stock serves it
            if self._outgrows_one_pool(request):
                raise ValueError(f"request {request.request_id} has {', '.join(blockers)}, "
                                 f"which ESP cannot compute spread over instances, and its "
                                 f"{request.num_tokens} tokens do not fit one instance's KV "
                                 f"pool")
            return False
        if max(requested_instances(request), requested_prefill_instances(request),
               self.planned_prefill.get(request.request_id, 1)) > 1:
            return True
        return self._outgrows_one_pool(request)

    def place(self, request: Request,
              among: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Holders and chunk bounds: the master is the instance with most headroom and keeps
        the tail of the tokens; earlier chunks fill the others in whole blocks, most
        headroom first. Decode tokens grow on the master and scale up when it is full.
        ``among``: a parallel prefill over exactly these instances (the global manager's)."""
        bs = self.block_size
        n = self.pool.num_instances
        headroom = {i: self.pool.free_blocks(i) - self.pool.pending_demand(i) for i in range(n)}
        order = sorted([i for i in (among or range(n)) if i not in self.pool.dead],
                       key=lambda i: (-headroom[i], i))
        master, others = order[0], order[1:]
        tokens = request.num_tokens  # prompt (+ outputs of a request placed again)
        k = min(len(order), max(requested_instances(request),
                                self.prefill_instances_wanted(request)))
        if k > 1:
            return self._place_evenly(request, order[:k], headroom)
        prefix = max(0, tokens + 1 - headroom[master] * bs)
        prefix = -(-prefix // bs) * bs  # peers hold whole blocks
        if prefix >= tokens:
            raise ValueError(f"request {request.request_id}: no free blocks for its last chunk")
        holders, bounds, left = [], [0], prefix
        for i in others:
            if left == 0:
                break
            take = min(left, max(0, headroom[i]) * bs)
            if take:
                holders.append(i)
                bounds.append(bounds[-1] + take)
                left -= take
        if left:
            cap = sum(max(0, h) for h in headroom.values()) * bs
            raise ValueError(
                f"request {request.request_id} needs {tokens + 1} KV tokens; the ESP pool has "
                f"{cap} free over {n} instances (limit: the sum of the instances' pools)")
        holders.append(master)
        bounds.append(tokens)
        return holders, bounds

    def prefill_instances_wanted(self, request: Request) -> int:
        """Prefill parallelism asked by the client or given by the global manager."""
        return max(requested_prefill_instances(request),
                   self.planned_prefill.get(request.request_id, 1))

    def _even_bounds(self, tokens: int, k: int) -> list[int]:
        """Chunk bounds of ``tokens`` in at most ``k`` equal block-aligned chunks."""
        chunk = -(-tokens // k)
        chunk = max(self.block_size, -(-chunk // self.block_size) * self.block_size)
        return list(range(0, tokens, chunk)) + [tokens]

    def _place_evenly(self, request: Request, chosen: list[int],
                      headroom: dict[int, int]) -> tuple[list[int], list[int]]:
        """Equal block-aligned chunks over ``chosen`` (most headroom first = master)."""
        bounds = self._even_bounds(request.num_tokens, len(chosen))
        holders = chosen[1:len(bounds) - 1] + chosen[:1]
        for j, i in enumerate(holders):
            size = bounds[j + 1] - bounds[j] + (1 if j == len(holders) - 1 else 0)
            if self.pool.blocks_for(size) > headroom[i]:
                raise ValueError(f"request {request.request_id}: instance {i} has no room "
                                 f"for its chunk of {size} tokens yet")
        return holders, bounds

    def add(self, request: Request) -> int | None:
        """Place a request that needs several instances and start its chunks; returns its
        master. A request asked only for a parallel prefill (its KV fits one instance) is not
        placed when that cannot run now, as a ring keeping the KV on its master: None, and
        the caller runs it as a plain request (chunks in turn would only be slower)."""
        prefill_only = requested_instances(request) == 1 and \
            self.prefill_instances_wanted(request) > 1 and not self._outgrows_one_pool(request)
        allowed = self.rings_to_join.pop(request.request_id, None)
        among = self.planned_instances.pop(request.request_id, None)
        try:
            holders, bounds = self.place(request, among)
        except ValueError:
            if prefill_only:  # no room for the chunks now: one instance does it
                self.planned_prefill.pop(request.request_id, None)
                return None
            raise
        span = SpanningRequest(request, holders, bounds)
        span.parallel = len(holders) > 1 and self.parallel_prefill and \
            self._room_for_parallel_prefill(span)
        if not span.parallel and len(holders) > 1 and self.batch_rings and self.parallel_prefill:
            span = self._join_pending_ring(request, len(holders), allowed) or span
        span.keep_on_master = span.parallel and self._fits_master(span)
        self.planned_prefill.pop(request.request_id, None)
        if prefill_only and not span.keep_on_master:
            return None
        span.keep_on_master &= prefill_only
        if request.num_output_tokens:
            span.outputs_to_send = list(request.output_token_ids)
        self.spans[request.request_id] = span
        self.num_spanning += len(span.holders) > 1 and not span.keep_on_master
        self.prefill_instances[len(span.holders)] += 1
        logger.info("ESP: request %s (%d tokens) spans instances %s, chunks %s, %s prefill%s",
                    request.request_id, request.num_tokens, span.holders, span.bounds,
                    "parallel" if span.parallel else "sequential",
                    ", KV kept on the master" if span.keep_on_master else "")
        if span.parallel:
            self.num_parallel_prefills += 1
            self.reserved.update(span.holders)
            for j in range(len(span.holders)):
                self._start_chunk(span, j)
        else:
            self._start_chunk(span, 0)
        return span.master

    def _join_pending_ring(self, request: Request, k: int,
                           allowed: list[tuple[int, ...]] | None = None) -> SpanningRequest | None:
        """LoongServe batches several requests in one ring prefill. A request whose own
        holders are taken by a parallel prefill that has not run yet joins that prefill
        (same instances, same ring order, equal chunks of its own) when every holder's stock
        scheduler can run both chunks in the next step; the two then share one ring (one
        message per hop carries both shards). ``allowed``: only rings over these holders
        (the global manager's choice for a prefill-only request). None if no pending ring
        can take it."""
        bounds = self._even_bounds(request.num_tokens, k)
        if len(bounds) - 1 != k:
            return None
        for other in self._pending_parallel():
            if len(other.holders) != k or not self._ring_possible(other) \
                    or (allowed is not None and tuple(other.holders) not in allowed):
                continue
            span = SpanningRequest(request, list(other.holders), bounds)
            if self._ring_possible(span) and self._room_for_parallel_prefill(span, join=True):
                span.parallel = True
                return span
        return None

    def _pending_parallel(self) -> list[SpanningRequest]:
        """Parallel prefills admitted (chunks queued, holders reserved) but not run yet."""
        return [s for s in self.spans.values() if s.parallel and not s.prefilled]

    def blocks_for_parallel_prefill(self) -> dict[int, int]:
        """Free blocks (after their running requests' next step), by instance, of the
        instances that could take part in a parallel prefill next step: not reserved, only
        decodes running, no KV-holding request queued."""
        spare = {i: self.spare_blocks(i) for i in range(len(self.schedulers))
                 if self._idle_for_parallel_prefill(i)}
        return {i: n for i, n in spare.items() if n > 0}  # a helper holds its chunk's blocks

    def _idle_for_parallel_prefill(self, i: int, pending: frozenset[str] = frozenset()) -> bool:
        """Not reserved by another parallel prefill, only decodes running (no chunked prefill
        competes for the budget), no KV-holding request queued ahead. ``pending``: the views
        of the parallel prefills being joined; their reservation and queued chunks are
        allowed (the caller counts them in the budget)."""
        sched = self.schedulers[i]
        return i not in self.busy and not ((i in self.reserved and not pending)
                    or any(r.request_id not in pending for r in sched.kv_holding_waiting)
                    or any(r.num_computed_tokens < r.num_tokens - 1 for r in sched.running))

    def spare_blocks(self, i: int) -> int:
        """Free blocks after the running requests' next step and the queued requests' need."""
        return self.pool.free_blocks(i) - self.blocks_needed(i) - self.pool.pending_demand(i)

    def _outgrows_one_pool(self, request: Request) -> bool:
        need = self.pool.blocks_for(request.num_tokens + 1)
        return need > max(self.pool.total_blocks(i) for i in range(self.pool.num_instances))

    def _fits_master(self, span: SpanningRequest) -> bool:
        """Can the master keep the whole prompt? Then the prefill runs as a ring over all the
        holders and stores everything on the master (LoongServe's proactive migration): the
        others are free again after one step and the decode needs no remote attention."""
        return self._ring_possible(span) and \
            self.pool.blocks_for(span.request.num_tokens + 1) <= self.spare_blocks(span.master)

    def _ring_possible(self, span: SpanningRequest) -> bool:
        """Rings are on, there is more than one holder, and no prompt logprobs (a ring
        computes rows out of prompt order)."""
        params = span.request.sampling_params
        return (self.ring_prefill and len(span.holders) > 1
                and (params is None or params.prompt_logprobs is None))

    def _room_for_parallel_prefill(self, span: SpanningRequest, join: bool = False) -> bool:
        """Will every holder's stock scheduler run its whole chunk in the next step? Only
        decodes are running there (no chunked prefill competes for the budget), no other
        KV-holding request is queued ahead, the chunk fits the token budget, a request slot
        and the free blocks, and chunk 0 goes to the front of an FCFS queue. ``join``: the
        chunks of the parallel prefills not run yet share the step (and are counted)."""
        ahead: dict[int, list[int]] = {}  # instance -> sizes of pending chunks there
        views: set[str] = set()  # their local views
        for other in (self._pending_parallel() if join else ()):
            for i, size, view in zip(other.holders, other.chunk_sizes, other.views):
                ahead.setdefault(i, []).append(size)
                views.add(view.request_id)
        pending = frozenset(views)
        for j, (i, size) in enumerate(zip(span.holders, span.chunk_sizes)):
            sched = self.schedulers[i]
            threshold = sched.scheduler_config.long_prefill_token_threshold
            others = ahead.get(i, [])
            if (not self._idle_for_parallel_prefill(i, pending)
                    # chunk 0 holds no KV: it must stay at the head of the waiting queue
                    # while requests keep arriving (a priority queue would reorder it)
                    or (j == 0 and not isinstance(sched.waiting, FCFSRequestQueue))
                    or size + sum(others) + len(sched.running) > sched.max_num_scheduled_tokens
                    or (threshold and size > threshold)
                    or len(sched.running) + 1 + len(others) > sched.max_num_running_reqs
                    or self.pool.blocks_for(size) + sum(map(self.pool.blocks_for, others))
                    + self.blocks_needed(i) > self.pool.free_blocks(i)):
                return False
        return True

    def blocks_needed(self, i: int) -> int:
        """New blocks the running requests of instance ``i`` take if all are scheduled."""
        sched, need = self.schedulers[i], 0
        for r in sched.running:
            todo = min(r.num_tokens - r.num_computed_tokens, sched.max_num_scheduled_tokens)
            need += max(0, self.pool.blocks_for(r.num_computed_tokens + todo)
                        - self.held_blocks(i, r.request_id))
        return need

    def _new_shadow(self, real: Request, j: int, end: int, keeps_kv: bool = True) -> Request:
        """A local view of chunk ``j``. One that keeps no KV (``keeps_kv=False``: a compute-only
        ring member) hashes its blocks under a salt of its own: its lookups never hit (it
        computes its whole chunk) and its garbage blocks never serve another request."""
        return Request(
            request_id=f"{real.request_id}{SHADOW_SUFFIX}{j}",
            prompt_token_ids=list(real.all_token_ids[:end]),
            sampling_params=SamplingParams(temperature=0.0, max_tokens=1 << 30,
                                           ignore_eos=True),
            pooling_params=None,
            client_index=real.client_index,
            arrival_time=real.arrival_time,
            # same block hashes as the real request: with prefix caching on, a chunk's full
            # blocks are cached under the true prefix hash (chunk 0 can serve later hits)
            block_hasher=real._block_hasher,
            cache_salt=real.cache_salt if keeps_kv else f"esp-compute-only:{real.request_id}",
        )

    def _start_chunk(self, span: SpanningRequest, j: int) -> None:
        real = span.request
        begin, end = span.bounds[j], span.bounds[j + 1]
        is_master = j == len(span.holders) - 1
        view = real if is_master else self._new_shadow(real, j, end, not span.keep_on_master)
        if begin and is_master and span.keep_on_master:
            self._allocate_prefix(span.holders[j], view, begin)
        elif begin:
            self._skip_prefix(span.holders[j], view, begin)
        span.views.append(view)
        span.parked.append(False)
        self.view_of[view.request_id] = (real.request_id, j)
        sched = self.schedulers[span.holders[j]]
        sched.add_request(view)
        if span.parallel and not begin:  # chunk 0 holds no KV yet: front of the FCFS queue
            sched.waiting.remove_request(view)
            sched.waiting.prepend_request(view)

    def _skip_prefix(self, instance: int, view: Request, begin: int) -> None:
        """Mark ``[0, begin)`` as computed elsewhere: null blocks, as vLLM does for tokens
        outside a sliding window, and the KV-transfer path admits it as partly computed."""
        manager = self.schedulers[instance].kv_cache_manager
        for m in manager.coordinator.single_type_managers:
            m.req_to_blocks[view.request_id] = [m._null_block] * (begin // m.block_size)
            m.num_cached_block[view.request_id] = begin // m.block_size
        view.num_computed_tokens = begin

    def _allocate_prefix(self, instance: int, view: Request, begin: int) -> None:
        """The master of a keep-on-master ring gets real blocks for ``[0, begin)`` (filled by
        the ring's keep-range writes in the prefill step), admitted as partly computed like
        ``_skip_prefix``. They count as uncached so that prefix caching hashes them with the
        rest of the prompt once they are full."""
        manager = self.schedulers[instance].kv_cache_manager
        for m in manager.coordinator.single_type_managers:
            m.req_to_blocks[view.request_id] = m.block_pool.get_new_blocks(begin // m.block_size)
            m.num_cached_block[view.request_id] = 0
        view.num_computed_tokens = begin

    # ---- scale-up ---------------------------------------------------------------------
    def held_blocks(self, instance: int, rid: str) -> int:
        """Entries in the request's block table there (null prefix included)."""
        m = self.schedulers[instance].kv_cache_manager.coordinator.single_type_managers[0]
        return len(m.req_to_blocks.get(rid, ()))

    def can_migrate(self, request: Request, instance: int) -> bool:
        """A decoding request on ``instance`` whose next token needs a new block there."""
        if not self.enabled:
            return False
        if self.is_shadow(request.request_id):
            return False  # shadows never decode
        if request.sampling_params is None or request.use_structured_output:
            return False
        n = request.num_computed_tokens
        return n == request.num_tokens - 1 and \
            self.held_blocks(instance, request.request_id) * self.block_size == n

    def migrate(self, request: Request, src: int, dst: int, kind: str = "scale-up") -> None:
        """A new master: the master's KV stays on ``src`` (a parked shadow takes its blocks)
        and the real request continues on ``dst`` from its next token. ``kind``: scale-up
        (``dst`` is added to the request's instances), merge (a scale-up onto an instance
        that runs decodes of its own, whose batch the request joins: LoongServe's merge) or
        relieve (``dst`` already holds some of its KV; its old master decodes too many
        requests)."""
        rid, n = request.request_id, request.num_computed_tokens
        span = self.spans.get(rid)
        if span is None:  # a single-instance request outgrowing its instance
            span = SpanningRequest(request, [src], [0, n], views=[request], parked=[False])
            self.spans[rid] = span
            self.view_of[rid] = (rid, 0)
            self.num_spanning += 1
        j = len(span.holders) - 1
        shadow = self._new_shadow(request, j, n)
        self._hand_over(src, request, shadow)
        span.views[j], span.parked[j] = shadow, True
        self.view_of[shadow.request_id] = (rid, j)
        span.bounds[-1] = n
        span.holders.append(dst)
        span.bounds.append(n)
        request.status = RequestStatus.WAITING
        self._skip_prefix(dst, request, n)
        span.views.append(request)
        span.parked.append(False)
        self.view_of[rid] = (rid, j + 1)
        span.outputs_to_send = list(request.output_token_ids)
        self.schedulers[dst].add_request(request)
        if kind == "relieve":
            self.num_master_moves += 1
        else:
            self.num_scale_up += 1
            self.num_merge += kind == "merge"
        logger.info("ESP: %s of request %s at token %d: instance %d -> %d (holders %s)",
                    kind, rid, n, src, dst, span.holders)

    def _hand_over(self, instance: int, request: Request, shadow: Request) -> None:
        """Give ``request``'s blocks on ``instance`` to ``shadow`` (no copy, no free)."""
        sched = self.schedulers[instance]
        rid = request.request_id
        for m in sched.kv_cache_manager.coordinator.single_type_managers:
            m.req_to_blocks[shadow.request_id] = m.req_to_blocks.pop(rid)
            if rid in m.num_cached_block:
                m.num_cached_block[shadow.request_id] = m.num_cached_block.pop(rid)
        sched.running = [r for r in sched.running if r is not request]
        del sched.requests[rid]
        shadow.status = RequestStatus.RUNNING
        shadow.num_computed_tokens = request.num_computed_tokens
        sched.requests[shadow.request_id] = shadow
        sched.finished_req_ids.add(rid)  # that instance's runner drops the request's state

    # ---- recompute --------------------------------------------------------------------
    def take_back(self, view_id: str) -> Request | None:
        """A stock scheduler preempted a view: drop every view of its request and return the
        real request, reset to be placed again (recompute, like vLLM's preemption)."""
        hit = self.view_of.get(view_id)
        if hit is None:
            return None
        span = self.spans.pop(hit[0])
        real = span.request
        self._finish_views(span, with_real=True)
        real.status = RequestStatus.WAITING
        real.num_computed_tokens = 0
        self.num_recompute += 1
        logger.info("ESP: spanning request %s preempted (instance full), placing it again",
                    real.request_id)
        return real

    # ---- the step ---------------------------------------------------------------------
    def build_plan(self, outs: list) -> ESPStepPlan | None:
        self._check_parallel_prefills(outs)
        rings = [self._ring(span) for span in self._rings_now]
        self.num_batched_ring_prefills += sum(len(g) for g in ring_groups(rings) if len(g) > 1)
        in_ring = {m.req_id for r in rings for m in r.members}
        spans, resume = [], {}
        for i, out in enumerate(outs):
            for new in out.scheduled_new_reqs:
                span = self.spans.get(new.req_id)
                if span is not None and span.outputs_to_send is not None:
                    resume[new.req_id] = span.outputs_to_send
                    span.outputs_to_send = None
            for rid, n in out.num_scheduled_tokens.items():
                if rid not in self.view_of:
                    continue
                real_id, j = self.view_of[rid]
                span = self.spans[real_id]
                if j == 0 or rid in in_ring:
                    continue  # no earlier chunks (plain local attention), or in a ring
                begin = span.bounds[j]
                view = span.views[j]
                local_blocks = self._block_ids(i, rid)[begin // self.block_size:]
                spans.append(SpanAttention(
                    req_id=rid, instance=i, num_query_tokens=n, prefix_len=begin,
                    local_len=view.num_computed_tokens - begin,  # after this step's tokens
                    local_block_ids=local_blocks,
                    peers=[self._peer_chunk(span, k) for k in range(j)],
                ))
        if not spans and not resume and not rings:
            return None
        return ESPStepPlan(spans, resume, rings)

    def _ring(self, span: SpanningRequest) -> RingPrefill:
        """The striped ring of a parallel prefill: member ``j`` is chunk ``j``'s holder; it
        computes the stripe ``stripes(chunk sizes)[j]`` and keeps chunk ``j``."""
        bs, tokens = self.block_size, span.request.all_token_ids
        sizes = span.chunk_sizes
        members = []
        for j, (positions, view) in enumerate(zip(stripes(sizes), span.views)):
            begin, end = span.bounds[j], span.bounds[j + 1]
            if span.keep_on_master:  # the master keeps the whole prompt, the others nothing
                begin, end = (0, end) if view is span.request else (begin, begin)
            ids = self._block_ids(span.holders[j], view.request_id)
            members.append(RingMember(
                instance=span.holders[j], req_id=view.request_id, num_rows=sizes[j],
                keep_begin=begin, keep_end=end, block_ids=ids[begin // bs: -(-end // bs)],
                token_ids=np.asarray(tokens)[positions].tolist()))
        self.num_ring_prefills += 1
        return RingPrefill(members)

    def _ring_eligible(self, span: SpanningRequest, got: list[int]) -> bool:
        """A ring is possible and whole chunks are computed this step (no prefix-cache hit)."""
        return self._ring_possible(span) and got == span.chunk_sizes

    def _check_parallel_prefills(self, outs: list) -> None:
        """A parallel prefill must run all its chunks in this one step: a chunk computed
        without its earlier chunks' KV would be wrong, so a violation stops the engine."""
        self.reserved.clear()
        self._rings_now = []
        for span in self.spans.values():
            if not span.parallel or span.prefilled:
                continue
            got = [outs[i].num_scheduled_tokens.get(v.request_id, 0)
                   for i, v in zip(span.holders, span.views)]
            if not any(got):
                self.reserved.update(span.holders)  # not started yet: keep the room
                continue
            # (a prefix-cache hit may leave less than the chunk to compute)
            done = [v.num_computed_tokens for v in span.views]
            if done != span.bounds[1:]:
                raise RuntimeError(
                    f"ESP parallel prefill of {span.request.request_id}: instances "
                    f"{span.holders} reach tokens {done} of chunk ends {span.bounds[1:]} "
                    f"in one step (scheduled {got})")
            span.prefilled = True
            if self._ring_eligible(span, got):
                self._rings_now.append(span)
            elif span.keep_on_master:
                raise RuntimeError(f"ESP ring prefill of {span.request.request_id} (KV kept on "
                                   f"the master) cannot run as a ring: scheduled {got}")

    def _block_ids(self, instance: int, rid: str) -> list[int]:
        return list(self.schedulers[instance].kv_cache_manager.get_block_ids(rid)[0])

    def _peer_chunk(self, span: SpanningRequest, k: int) -> PeerChunk:
        bs = self.block_size
        begin, end = span.bounds[k], span.bounds[k + 1]
        ids = self._block_ids(span.holders[k], span.views[k].request_id)
        return PeerChunk(span.holders[k], end - begin, ids[begin // bs: -(-end // bs)])

    def filter_outputs(self, eco) -> None:
        """Drop the shadows' outputs (their samples are garbage by design)."""
        eco.outputs = [o for o in eco.outputs if not self.is_shadow(o.request_id)]
        if eco.finished_requests:
            eco.finished_requests = {r for r in eco.finished_requests
                                     if not self.is_shadow(r)}

    def is_shadow(self, rid: str) -> bool:
        hit = self.view_of.get(rid)
        return hit is not None and hit[0] != rid

    def advance(self, busy: frozenset[int] = frozenset()) -> None:
        """Park shadows whose chunk is prefilled (scale-down) and start the next chunk; a
        keep-on-master ring is over after its prefill step: its shadows are freed and the
        request is a plain one on the master. ``busy``: instances whose step is still running
        (their spans are left alone until its output is in)."""
        for span in list(self.spans.values()):
            if busy and busy.intersection(span.holders):
                continue
            if span.keep_on_master and span.prefilled:
                self.spans.pop(span.request.request_id)
                self._finish_views(span, with_real=False)
                self.num_scale_down += len(span.holders) - 1
                continue
            for j, view in enumerate(span.views):
                if view is span.request or span.parked[j]:
                    continue
                if view.status == RequestStatus.RUNNING and \
                        view.num_computed_tokens >= view.num_prompt_tokens:
                    sched = self.schedulers[span.holders[j]]
                    sched.running = [r for r in sched.running if r is not view]
                    span.parked[j] = True
                    self.num_scale_down += 1
        self.start_next_chunks()

    def groups(self) -> list[set[int]]:
        """Instances linked by spread requests (their steps exchange attention data): each
        such group steps together; every other instance steps on its own."""
        parent: dict[int, int] = {}

        def root(i: int) -> int:
            while parent.setdefault(i, i) != i:
                i = parent[i]
            return i

        for span in self.spans.values():
            first = root(span.holders[0])
            for h in span.holders[1:]:
                parent[root(h)] = first
        found: dict[int, set[int]] = {}
        for i in list(parent):
            found.setdefault(root(i), set()).add(i)
        return list(found.values())

    def start_next_chunks(self) -> None:
        """Sequential prefill: start the chunk after a parked one, unless its instance is
        reserved for a parallel prefill this step (it would take that step's room)."""
        for span in list(self.spans.values()):
            j = span.stage
            if span.parked[j] and j + 1 < len(span.holders) and \
                    span.holders[j + 1] not in self.reserved:
                self._start_chunk(span, j + 1)

    # ---- release ----------------------------------------------------------------------
    def is_spanning(self, rid: str) -> bool:
        return rid in self.spans

    def instances_of(self, rid: str) -> int:
        span = self.spans.get(rid)
        return len(set(span.holders)) if span is not None else 1

    def release(self, real_id: str) -> None:
        """The real request finished: free every shadow's blocks on its instance."""
        span = self.spans.pop(real_id, None)
        if span is not None:
            self._finish_views(span, with_real=False)

    def _finish_views(self, span: SpanningRequest, with_real: bool) -> None:
        """Free the span's views on their instances (the real request's too if asked)."""
        for j, view in enumerate(span.views):
            self.view_of.pop(view.request_id, None)
            if view is span.request and not with_real:
                continue
            sched = self.schedulers[span.holders[j]]
            if span.parked[j]:
                sched.running.append(view)  # finish_requests takes it off the running list
            if view.request_id in sched.requests:
                sched.finish_requests(view.request_id, RequestStatus.FINISHED_ABORTED)

    def abort(self, real_id: str, status: RequestStatus) -> list[Request]:
        """Client abort of a spanning request (any stage)."""
        span = self.spans.get(real_id)
        if span is None:
            return []
        real = span.request
        finished = []
        if span.views and span.views[-1] is real:
            finished = self.schedulers[span.master].finish_requests(real_id, status)
        else:
            real.status = status
            finished = [real]
        self.release(real_id)
        return finished

    def placement(self, real_id: str) -> dict[int, int]:
        """{instance: blocks held there} of a spanning request."""
        span = self.spans.get(real_id)
        if span is None:
            return {}
        out = {}
        for j, view in enumerate(span.views):
            held = [b for b in self._block_ids(span.holders[j], view.request_id) if b != 0]
            if held:
                out[span.holders[j]] = out.get(span.holders[j], 0) + len(held)
        return out
