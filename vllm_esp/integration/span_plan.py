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

A *ring prefill* (LoongServe's striped ring) is how a spanning prompt is prefilled when all
its chunks run in one step: the instances compute interleaved *stripes* of the prompt (not
their own chunks), pass their K/V around the ring once per layer, attend each visiting shard
causally by global position, and each stores the visiting tokens that fall in its own chunk
(its *keep range*). Every instance then does the same attention work, whatever its chunk's
position in the prompt.
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


def stripes(sizes: list[int]) -> list[list[int]]:
    """Which prompt positions each member of a ring prefill computes.

    Member ``j`` computes ``sizes[j]`` positions (its chunk's length: the rows its scheduler
    scheduled) spread evenly over the whole prompt, so every member's causal attention work
    is in proportion to its rows. With equal sizes this is LoongServe's striping (position
    ``t`` on member ``t % k``). The last position goes to the last member (the master), as its
    last row: the row vLLM samples from. Returns ascending positions per member.
    """
    total = sum(sizes)
    if total == 0 or any(n < 0 for n in sizes) or sizes[-1] < 1:
        raise ValueError(f"bad ring prefill sizes {sizes}")
    left = list(sizes)
    left[-1] -= 1  # reserved: the last position
    credit = [0] * len(sizes)
    out: list[list[int]] = [[] for _ in sizes]
    for t in range(total - 1):  # smooth weighted round robin over the members with room
        best = -1
        for j, n in enumerate(sizes):
            if left[j]:
                credit[j] += n
                if best < 0 or credit[j] > credit[best]:
                    best = j
        credit[best] -= total
        left[best] -= 1
        out[best].append(t)
    out[-1].append(total - 1)
    return out


@dataclass(slots=True)
class RingMember:
    """One instance's part of a ring prefill."""

    instance: int
    req_id: str  # the view's request id in that instance's scheduler (and runner)
    num_rows: int  # rows its scheduler scheduled (its chunk's length): the stripe's size
    keep_begin: int  # prompt positions [keep_begin, keep_end) it stores (may be empty)
    keep_end: int
    block_ids: list[int]  # its physical blocks for the keep range, in token order
    token_ids: list[int]  # prompt token ids at the positions it computes (``stripes``)


@dataclass(slots=True)
class RingPrefill:
    """A spanning prompt prefilled in one step by all its holders (ring order = chunk order)."""

    members: list[RingMember]

    def positions(self) -> list[list[int]]:
        return stripes([m.num_rows for m in self.members])

    def member_index(self, instance: int) -> int | None:
        for j, m in enumerate(self.members):
            if m.instance == instance:
                return j
        return None


def ring_groups(rings: list[RingPrefill]) -> list[list[int]]:
    """Indices of the rings that run as one batched ring: the same members' instances in the
    same order (LoongServe batches their requests; one message per hop carries all shards).
    Groups come in the order of their first ring."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ring in enumerate(rings):
        groups.setdefault(tuple(m.instance for m in ring.members), []).append(i)
    return list(groups.values())


@dataclass(slots=True)
class ESPStepPlan:
    """Spans scheduled this step; identical on every instance of the engine."""

    spans: list[SpanAttention] = field(default_factory=list)
    # request id -> tokens produced so far, for a request that is new on its instance's
    # runner but already has outputs (scale-up, or placed again after a recompute)
    resume_outputs: dict[str, list[int]] = field(default_factory=dict)
    rings: list[RingPrefill] = field(default_factory=list)

    def asked_by(self, instance: int) -> list[SpanAttention]:
        return [s for s in self.spans if s.instance == instance]

    def served_by(self, instance: int) -> list[tuple[SpanAttention, PeerChunk]]:
        return [(s, p) for s in self.spans for p in s.peers if p.instance == instance]

    def ring_batches(self, instance: int) -> list[list[tuple[int, RingPrefill, int]]]:
        """``rings_of(instance)`` grouped into the batches that run as one ring: rings over
        the same instances in the same order (``ring_groups``), in plan order."""
        return [[(i, self.rings[i], self.rings[i].member_index(instance)) for i in group]
                for group in ring_groups(self.rings)
                if self.rings[group[0]].member_index(instance) is not None]

    def rings_of(self, instance: int) -> list[tuple[int, RingPrefill, int]]:
        """``(index in rings, ring, member index)`` of each ring prefill this instance is a
        member of, in plan order."""
        found = ((i, r, r.member_index(instance)) for i, r in enumerate(self.rings))
        return [(i, r, j) for i, r, j in found if j is not None]

    def involves(self, instance: int) -> bool:
        return bool(self.asked_by(instance) or self.served_by(instance)
                    or self.rings_of(instance))


PLAN_ATTR = "esp_plan"  # attribute carrying the plan on each per-instance SchedulerOutput
