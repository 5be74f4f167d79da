"""The per-step plan for requests whose KV spans several instances (plain data, no torch).

A *spanning* request keeps contiguous token ranges on several instances: chunk ``j`` (tokens
``[begin_j, end_j)``) lives on instance ``holders[j]``; the last holder is the *master*, which
runs the real request (sampling, outputs, decode). Every other holder runs a *shadow* local
view: a request with the prompt prefix ``[0, end_j)`` whose first ``begin_j`` tokens are
"already computed" elsewhere, so vLLM's runner computes exactly chunk ``j`` with global
positions and stores its KV locally.

An instance whose scheduled request is a local view of a spanning request attends its local
KV itself and asks the holders of the earlier chunks for partial attention (output + LSE) over
theirs, once per layer. The plan tells every instance of the step who asks whom; all shapes
follow from it, so no metadata travels with the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class PeerChunk:
    instance: int  # instance holding this earlier chunk
    num_tokens: int  # tokens of the request stored there (KV already written)
    block_ids: list[int]  # that instance's physical block ids for them, in token order


@dataclass(slots=True)
class SpanAttention:
    """One local view of a spanning request scheduled this step."""

    req_id: str  # request id in the asking instance's own scheduler (and runner)
    instance: int  # the asking instance (its scheduler scheduled the query tokens)
    num_query_tokens: int  # tokens it computes this step (rows in its forward)
    prefix_len: int  # tokens of the request held before this instance's chunk
    local_len: int  # tokens stored on the asking instance after this step's writes
    local_block_ids: list[int]  # its physical blocks for them (null prefix stripped)
    peers: list[PeerChunk]  # holders of the earlier chunks (all of [0, prefix_len))


@dataclass(slots=True)
class ESPStepPlan:
    """Spans scheduled this step; identical on every instance of the engine."""

    spans: list[SpanAttention] = field(default_factory=list)
    # request id -> tokens produced so far, for a request that is new on its instance's
    # runner but already has outputs (scale-up, or placed again after a recompute)
    resume_outputs: dict[str, list[int]] = field(default_factory=dict)

    def asked_by(self, instance: int) -> list[SpanAttention]:
        return [s for s in self.spans if s.instance == instance]

    def served_by(self, instance: int) -> list[tuple[SpanAttention, PeerChunk]]:
        return [(s, p) for s in self.spans for p in s.peers if p.instance == instance]

    def involves(self, instance: int) -> bool:
        return bool(self.asked_by(instance) or self.served_by(instance))


PLAN_ATTR = "esp_plan"  # attribute carrying the plan on each per-instance SchedulerOutput
