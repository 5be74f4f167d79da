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
(partial attention + LSE merge). A holder in the middle of a step may take part: the request
links the holders, so they start their next step together. When the holders have no room,
the chunks run one after another with that same query exchange. Keep ranges (what is stored where) are contiguous chunks.
"""

from __future__ import annotations

from vllm.logger import init_logger
from vllm.v1.request import Request, RequestStatus

from vllm_esp.integration.span_support import request_blockers
from vllm_esp.integration.spanning import views
from vllm_esp.integration.spanning.plan_builder import PlanBuilder
from vllm_esp.integration.spanning.request import (
    SpanningRequest,
    requested_instances,
    requested_prefill_instances,
)
from vllm_esp.integration.spanning.room import RoomChecks
from vllm_esp.integration.stats import ESPStats
from vllm_esp.planner.placement import even_bounds, place_chunks, place_evenly

logger = init_logger(__name__)


class SpanManager(RoomChecks, PlanBuilder):
    def __init__(self, schedulers: list, pool, block_size: int, stats: ESPStats,
                 parallel_prefill: bool = True, ring_prefill: bool = True,
                 batch_rings: bool = True, enabled: bool = True):
        for sched in schedulers:
            views.check_scheduler(sched)
        self.schedulers = schedulers
        self.pool = pool
        self.block_size = block_size
        self.stats = stats
        # False: this model's attention cannot be spread correctly (span_support): every
        # request runs whole on one instance, hints are served unspread, no scale-up
        self.enabled = enabled
        self.parallel_prefill = parallel_prefill
        self.ring_prefill = ring_prefill  # parallel prefills as a striped ring when possible
        self.batch_rings = batch_rings  # a request may join a pending ring (same holders)
        self._rings_now: list[SpanningRequest] = []  # ring prefills of the step being planned
        self.reserved: set[int] = set()  # instances holding a parallel prefill not yet run
        # instances running a step: the scheduler's live in-flight map (only `in` is used)
        self.busy: frozenset[int] | dict = frozenset()
        self.spans: dict[str, SpanningRequest] = {}  # real request id -> span
        self.view_of: dict[str, tuple[str, int]] = {}  # view request id -> (real id, chunk)

    # ---- admission --------------------------------------------------------------------
    def needs_span(self, request: Request, prefill_k: int = 1) -> bool:
        """Its prompt (and the first new token) does not fit any single instance's pool, the
        client asked for it (``extra_args={"esp_instances": k}``), or the global manager gave
        its prefill ``prefill_k`` > 1 instances."""
        if not self.enabled or self.pool.num_instances < 2 or request.sampling_params is None:
            return False
        blockers = request_blockers(request)
        if blockers:  # served whole on one instance, as stock serves it
            if self.outgrows_one_pool(request):
                raise ValueError(f"request {request.request_id} has {', '.join(blockers)}, "
                                 f"which ESP cannot compute spread over instances, and its "
                                 f"{request.num_tokens} tokens do not fit one instance's KV "
                                 f"pool")
            return False
        if max(requested_instances(request), requested_prefill_instances(request),
               prefill_k) > 1:
            return True
        return self.outgrows_one_pool(request)

    def place(self, request: Request, among: list[int] | None = None,
              prefill_k: int = 1) -> tuple[list[int], list[int]]:
        """Holders and chunk bounds (``planner.placement``): the master is the instance with
        most headroom. ``among``: a parallel prefill over exactly these instances (the global
        manager's); with k > 1 instances asked for, equal chunks over the k with most
        headroom, else the master keeps the tail and the others fill in whole blocks."""
        n = self.pool.num_instances
        headroom = {i: self.pool.free_blocks(i) - self.pool.pending_demand(i) for i in range(n)}
        order = sorted([i for i in (among or range(n)) if i not in self.pool.dead],
                       key=lambda i: (-headroom[i], i))
        k = min(len(order), max(requested_instances(request),
                                requested_prefill_instances(request), prefill_k))
        try:
            if k > 1:
                return place_evenly(request.num_tokens, order[:k], headroom, self.block_size)
            return place_chunks(request.num_tokens, order, headroom, self.block_size)
        except ValueError as e:
            raise ValueError(f"request {request.request_id}: {e}") from None

    def add(self, request: Request, among: list[int] | None = None, prefill_k: int = 1,
            join: list[tuple[int, ...]] | None = None) -> int | None:
        """Place a request that needs several instances and start its chunks; returns its
        master. ``among`` / ``prefill_k``: the global manager's ring for its prefill; ``join``:
        the pending rings it may join. A request asked only for a parallel prefill (its KV
        fits one instance) is not placed when that cannot run now, as a ring keeping the KV on
        its master: None, and the caller runs it as a plain request (chunks in turn would only
        be slower)."""
        wanted = max(requested_prefill_instances(request), prefill_k)
        prefill_only = requested_instances(request) == 1 and wanted > 1 and \
            not self.outgrows_one_pool(request)
        try:
            holders, bounds = self.place(request, among, prefill_k)
        except ValueError:
            if prefill_only:  # no room for the chunks now: one instance does it
                return None
            raise
        span = SpanningRequest(request, holders, bounds)
        span.parallel = len(holders) > 1 and self.parallel_prefill and \
            self.room_for_parallel_prefill(span)
        if not span.parallel and len(holders) > 1 and self.batch_rings and self.parallel_prefill:
            span = self._join_pending_ring(request, len(holders), join) or span
        span.keep_on_master = span.parallel and self.fits_master(span)
        if prefill_only and not span.keep_on_master:
            return None
        span.keep_on_master &= prefill_only
        if request.num_output_tokens:
            span.outputs_to_send = list(request.output_token_ids)
        self.spans[request.request_id] = span
        self.stats.spanning_requests += len(span.holders) > 1 and not span.keep_on_master
        self.stats.prefill_instances[len(span.holders)] += 1
        logger.info("ESP: request %s (%d tokens) spans instances %s, chunks %s, %s prefill%s",
                    request.request_id, request.num_tokens, span.holders, span.bounds,
                    "parallel" if span.parallel else "sequential",
                    ", KV kept on the master" if span.keep_on_master else "")
        if span.parallel:
            self.stats.parallel_prefills += 1
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
        bounds = even_bounds(request.num_tokens, k, self.block_size)
        if len(bounds) - 1 != k:
            return None
        for other in self.pending_parallel():
            if len(other.holders) != k or not self.ring_possible(other) \
                    or (allowed is not None and tuple(other.holders) not in allowed):
                continue
            span = SpanningRequest(request, list(other.holders), bounds)
            if self.ring_possible(span) and self.room_for_parallel_prefill(span, join=True):
                span.parallel = True
                return span
        return None

    def _start_chunk(self, span: SpanningRequest, j: int) -> None:
        real = span.request
        begin, end = span.bounds[j], span.bounds[j + 1]
        is_master = j == len(span.holders) - 1
        sched = self.schedulers[span.holders[j]]
        view = real if is_master else views.new_shadow(real, j, end, not span.keep_on_master)
        if begin and is_master and span.keep_on_master:
            views.allocate_prefix(sched, view, begin)
        elif begin:
            views.skip_prefix(sched, view, begin)
        span.views.append(view)
        span.parked.append(False)
        self.view_of[view.request_id] = (real.request_id, j)
        sched.add_request(view)
        if span.parallel and not begin:  # chunk 0 holds no KV yet: front of the queue
            views.to_front(sched, view)

    # ---- scale-up ---------------------------------------------------------------------
    def can_migrate(self, request: Request, instance: int) -> bool:
        """A decoding request on ``instance`` whose next token needs a new block there."""
        if not self.enabled or self.is_shadow(request.request_id):
            return False  # (shadows never decode)
        if request.sampling_params is None or request.use_structured_output:
            return False
        n = request.num_computed_tokens
        return n == request.num_tokens - 1 and \
            views.held_blocks(self.schedulers[instance], request.request_id) * \
            self.block_size == n

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
            self.stats.spanning_requests += 1
        j = len(span.holders) - 1
        shadow = views.new_shadow(request, j, n)
        views.hand_over(self.schedulers[src], request, shadow)
        span.views[j], span.parked[j] = shadow, True
        self.view_of[shadow.request_id] = (rid, j)
        span.bounds[-1] = n
        span.holders.append(dst)
        span.bounds.append(n)
        request.status = RequestStatus.WAITING
        views.skip_prefix(self.schedulers[dst], request, n)
        span.views.append(request)
        span.parked.append(False)
        self.view_of[rid] = (rid, j + 1)
        span.outputs_to_send = list(request.output_token_ids)
        self.schedulers[dst].add_request(request)
        if kind == "relieve":
            self.stats.master_moves += 1
        else:
            self.stats.scale_up += 1
            self.stats.merge += kind == "merge"
        logger.info("ESP: %s of request %s at token %d: instance %d -> %d (holders %s)",
                    kind, rid, n, src, dst, span.holders)

    # ---- recompute --------------------------------------------------------------------
    def take_back(self, view_id: str) -> Request | None:
        """A stock scheduler preempted a view (or its instance was lost): drop every view of
        its request and return the real request, reset to be placed again (recompute, like
        vLLM's preemption)."""
        hit = self.view_of.get(view_id)
        if hit is None:
            return None
        span = self.spans.pop(hit[0])
        real = span.request
        self._finish_views(span, with_real=True)
        real.status = RequestStatus.WAITING
        real.num_computed_tokens = 0
        self.stats.span_recompute += 1
        logger.info("ESP: spanning request %s preempted, placing it again", real.request_id)
        return real

    # ---- each step ----------------------------------------------------------------------
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
                self.stats.scale_down += len(span.holders) - 1
                continue
            for j, view in enumerate(span.views):
                if view is span.request or span.parked[j]:
                    continue
                if view.status == RequestStatus.RUNNING and \
                        view.num_computed_tokens >= view.num_prompt_tokens:
                    views.park(self.schedulers[span.holders[j]], view)
                    span.parked[j] = True
                    self.stats.scale_down += 1
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
                views.unpark(sched, view)  # finish_requests takes it off the running list
            if view.request_id in sched.requests:
                sched.finish_requests(view.request_id, RequestStatus.FINISHED_ABORTED)

    def abort(self, real_id: str, status: RequestStatus) -> list[Request]:
        """Client abort of a spanning request (any stage)."""
        span = self.spans.get(real_id)
        if span is None:
            return []
        real = span.request
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
        out: dict[int, int] = {}
        for j, view in enumerate(span.views):
            held = [b for b in views.block_ids(self.schedulers[span.holders[j]],
                                               view.request_id) if b != 0]
            if held:
                out[span.holders[j]] = out.get(span.holders[j], 0) + len(held)
        return out
