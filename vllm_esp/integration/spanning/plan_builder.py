"""The step's ESP plan from the instances' scheduler outputs (``ops.plan.ESPStepPlan``)."""

from __future__ import annotations

import numpy as np

from vllm_esp.integration.spanning import views
from vllm_esp.integration.spanning.request import SpanningRequest
from vllm_esp.ops.plan import (
    ESPStepPlan,
    PeerChunk,
    RingMember,
    RingPrefill,
    SpanAttention,
    ring_groups,
    stripes,
)


class PlanBuilder:
    """Mixed into ``SpanManager``: reads its spans, views and schedulers."""

    def build_plan(self, outs: list) -> ESPStepPlan | None:
        self._check_parallel_prefills(outs)
        rings = [self._ring(span) for span in self._rings_now]
        self.stats.batched_ring_prefills += sum(len(g) for g in ring_groups(rings) if len(g) > 1)
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
                local_blocks = views.block_ids(self.schedulers[i], rid)[begin // self.block_size:]
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
        bs, tokens = self.block_size, np.asarray(span.request.all_token_ids)
        sizes = span.chunk_sizes
        members = []
        for j, (positions, view) in enumerate(zip(stripes(sizes), span.views)):
            begin, end = span.bounds[j], span.bounds[j + 1]
            if span.keep_on_master:  # the master keeps the whole prompt, the others nothing
                begin, end = (0, end) if view is span.request else (begin, begin)
            ids = views.block_ids(self.schedulers[span.holders[j]], view.request_id)
            members.append(RingMember(
                instance=span.holders[j], req_id=view.request_id, num_rows=sizes[j],
                keep_begin=begin, keep_end=end, block_ids=ids[begin // bs: -(-end // bs)],
                token_ids=tokens[positions].tolist()))
        self.stats.ring_prefills += 1
        return RingPrefill(members)

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
            if self.ring_possible(span) and got == span.chunk_sizes:
                self._rings_now.append(span)
            elif span.keep_on_master:
                raise RuntimeError(f"ESP ring prefill of {span.request.request_id} (KV kept on "
                                   f"the master) cannot run as a ring: scheduled {got}")

    def _peer_chunk(self, span: SpanningRequest, k: int) -> PeerChunk:
        bs = self.block_size
        begin, end = span.bounds[k], span.bounds[k + 1]
        ids = views.block_ids(self.schedulers[span.holders[k]], span.views[k].request_id)
        return PeerChunk(span.holders[k], end - begin, ids[begin // bs: -(-end // bs)])
