"""Requests whose KV is larger than one instance's pool: contiguous chunks over instances.

First slice of in-engine ESP (see docs/esp_engine_status.md). A request that cannot fit any
single instance's pool is split into contiguous, block-aligned token chunks; chunk ``j`` is
stored on ``holders[j]`` and the last holder (the *master*) runs the real request: prefill of
the last chunk, sampling, outputs and every decode step (its new tokens' KV lands there).

Each chunk is computed by the stock vLLM scheduler of its instance through a *local view*:

- chunks before the master's are *shadow* requests (prompt = the prefix up to the chunk's end,
  ``max_tokens`` unbounded) whose garbage sample is dropped; once its chunk is prefilled a
  shadow is *parked* (taken off its scheduler's running list, blocks kept) until the real
  request finishes;
- a view of chunk ``j > 0`` starts with ``num_computed_tokens = begin_j`` and null blocks for
  that prefix (the KV-transfer admission path of vLLM's scheduler), so the runner computes
  exactly the chunk with global positions and writes its KV into real local blocks.

Chunks are prefilled one after another (chunk ``j`` attends the KV of chunks ``< j``, held by
peers); the sequence-parallel striped prefill is the next step. No KV is replicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.logger import init_logger
from vllm.sampling_params import SamplingParams
from vllm.v1.request import Request, RequestStatus

from vllm_esp.integration.span_plan import ESPStepPlan, PeerChunk, SpanAttention

logger = init_logger(__name__)

SHADOW_SUFFIX = "#esp-chunk"


@dataclass
class SpanningRequest:
    request: Request  # the real request (run by the master, the last holder)
    holders: list[int]  # instance of each chunk, in token order; master last
    bounds: list[int]  # chunk j = tokens [bounds[j], bounds[j+1]); bounds[-1] = prompt length
    views: list[Request] = field(default_factory=list)  # local view per started chunk
    parked: list[bool] = field(default_factory=list)  # shadow j finished its chunk

    @property
    def master(self) -> int:
        return self.holders[-1]

    @property
    def stage(self) -> int:
        """Index of the most recently started chunk."""
        return len(self.views) - 1


class SpanManager:
    def __init__(self, schedulers: list, pool, block_size: int):
        self.schedulers = schedulers
        self.pool = pool
        self.block_size = block_size
        self.spans: dict[str, SpanningRequest] = {}  # real request id -> span
        self.view_of: dict[str, tuple[str, int]] = {}  # view request id -> (real id, chunk)
        self.num_spanning = 0  # requests served over several instances (cumulative)

    # ---- admission --------------------------------------------------------------------
    def needs_span(self, request: Request) -> bool:
        if self.pool.num_instances < 1 or request.sampling_params is None:
            return False
        need = self.pool.blocks_for(request.num_tokens + request.sampling_params.max_tokens)
        return need > max(self.pool.total_blocks(i) for i in range(self.pool.num_instances))

    def place(self, request: Request) -> tuple[list[int], list[int]]:
        """Holders and chunk bounds: the master is the instance with most headroom and keeps
        as much as it can (tail + all decode tokens); earlier chunks fill the others in
        whole blocks, most headroom first."""
        bs = self.block_size
        n = self.pool.num_instances
        headroom = {i: self.pool.free_blocks(i) - self.pool.pending_demand(i) for i in range(n)}
        order = sorted(range(n), key=lambda i: (-headroom[i], i))
        master, others = order[0], order[1:]
        prompt = request.num_prompt_tokens
        total = prompt + request.sampling_params.max_tokens
        prefix = max(0, total - headroom[master] * bs)
        prefix = -(-prefix // bs) * bs  # peers hold whole blocks
        if prefix >= prompt:
            raise ValueError(f"request {request.request_id}: the master instance cannot hold "
                             f"the decode tokens ({total} tokens, {headroom[master] * bs} free)")
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
                f"request {request.request_id} needs {total} KV tokens; the ESP pool has "
                f"{cap} free over {n} instances (limit: the sum of the instances' pools)")
        holders.append(master)
        bounds.append(prompt)
        return holders, bounds

    def add(self, request: Request) -> int:
        holders, bounds = self.place(request)
        span = SpanningRequest(request, holders, bounds)
        self.spans[request.request_id] = span
        self.num_spanning += 1
        logger.info("ESP: request %s (%d prompt tokens) spans instances %s, chunks %s",
                    request.request_id, request.num_prompt_tokens, holders, bounds)
        self._start_chunk(span, 0)
        return span.master

    def _start_chunk(self, span: SpanningRequest, j: int) -> None:
        real = span.request
        begin, end = span.bounds[j], span.bounds[j + 1]
        if j == len(span.holders) - 1:
            view = real
        else:
            view = Request(
                request_id=f"{real.request_id}{SHADOW_SUFFIX}{j}",
                prompt_token_ids=list(real.prompt_token_ids[:end]),
                sampling_params=SamplingParams(temperature=0.0, max_tokens=1 << 30,
                                               ignore_eos=True),
                pooling_params=None,
                client_index=real.client_index,
                arrival_time=real.arrival_time,
            )
        if begin:
            self._skip_prefix(span.holders[j], view, begin)
        span.views.append(view)
        span.parked.append(False)
        self.view_of[view.request_id] = (real.request_id, j)
        self.schedulers[span.holders[j]].add_request(view)

    def _skip_prefix(self, instance: int, view: Request, begin: int) -> None:
        """Mark ``[0, begin)`` as computed elsewhere: null blocks, as vLLM does for tokens
        outside a sliding window, and the KV-transfer path admits it as partly computed."""
        manager = self.schedulers[instance].kv_cache_manager
        for m in manager.coordinator.single_type_managers:
            m.req_to_blocks[view.request_id] = [m._null_block] * (begin // m.block_size)
            m.num_cached_block[view.request_id] = begin // m.block_size
        view.num_computed_tokens = begin

    # ---- the step ---------------------------------------------------------------------
    def build_plan(self, outs: list) -> ESPStepPlan | None:
        spans = []
        for i, out in enumerate(outs):
            for rid, n in out.num_scheduled_tokens.items():
                if rid not in self.view_of:
                    continue
                real_id, j = self.view_of[rid]
                span = self.spans[real_id]
                begin = span.bounds[j]
                view = span.views[j]
                local_blocks = self._block_ids(i, rid)[begin // self.block_size:]
                spans.append(SpanAttention(
                    req_id=rid, instance=i, num_query_tokens=n, prefix_len=begin,
                    local_len=view.num_computed_tokens - begin,  # after this step's tokens
                    local_block_ids=local_blocks,
                    peers=[self._peer_chunk(span, k) for k in range(j)],
                ))
        return ESPStepPlan(spans) if spans else None

    def _block_ids(self, instance: int, rid: str) -> list[int]:
        return list(self.schedulers[instance].kv_cache_manager.get_block_ids(rid)[0])

    def _peer_chunk(self, span: SpanningRequest, k: int) -> PeerChunk:
        bs = self.block_size
        begin, end = span.bounds[k], span.bounds[k + 1]
        ids = self._block_ids(span.holders[k], span.views[k].request_id)
        return PeerChunk(span.holders[k], end - begin, ids[begin // bs: -(-end // bs)])

    def filter_outputs(self, eco) -> None:
        """Drop the shadows' outputs (their samples are garbage by design)."""
        eco.outputs = [o for o in eco.outputs if not self._is_shadow(o.request_id)]
        if eco.finished_requests:
            eco.finished_requests = {r for r in eco.finished_requests
                                     if not self._is_shadow(r)}

    def _is_shadow(self, rid: str) -> bool:
        hit = self.view_of.get(rid)
        return hit is not None and hit[0] != rid

    def advance(self) -> None:
        """Park shadows whose chunk is prefilled and start the next chunk."""
        for span in list(self.spans.values()):
            j = span.stage
            view = span.views[j]
            if view is span.request or span.parked[j]:
                continue
            if view.status == RequestStatus.RUNNING and \
                    view.num_computed_tokens >= view.num_prompt_tokens:
                sched = self.schedulers[span.holders[j]]
                sched.running = [r for r in sched.running if r is not view]
                span.parked[j] = True
                self._start_chunk(span, j + 1)

    # ---- release ----------------------------------------------------------------------
    def is_spanning(self, rid: str) -> bool:
        return rid in self.spans

    def release(self, real_id: str) -> None:
        """The real request finished: free every shadow's blocks on its instance."""
        span = self.spans.pop(real_id, None)
        if span is None:
            return
        for j, view in enumerate(span.views):
            self.view_of.pop(view.request_id, None)
            if view is span.request:
                continue
            sched = self.schedulers[span.holders[j]]
            if span.parked[j]:
                sched.running.append(view)  # finish_requests takes it off the running list
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
