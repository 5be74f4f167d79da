"""The per-step plan of ESP attention: who computes which rows, who holds which KV.

Plain data (numpy for the stripe arithmetic, no torch, no vLLM). The scheduler side
(``integration``) builds one ``ESPStepPlan`` per engine step from vLLM's state and sends it to
every instance; each instance's worker turns it into device tensors once per step
(``ops.step.StepTensors``) and every layer reads those.

Vocabulary:

- a *spanning* request keeps contiguous token ranges (*chunks*) on several instances; chunk
  ``j`` lives on its *holder*; the last holder, the *master*, runs the real request;
- a *ring prefill* (LoongServe's striped ring) prefills a prompt on all its members in one
  step: member ``r`` computes the rows at its *positions* (a stripe of the prompt), the K/V
  shards travel around the ring, and each member stores the visiting tokens of its *keep
  range* ``[keep_begin, keep_end)`` in its paged cache;
- a *span query* (``SpanAttention``) is an instance computing rows of a request whose
  earlier tokens (``peers``) live on other instances: it attends its local KV and asks each
  peer for a partial (output, log-sum-exp) over theirs, merged by LSE. Decode steps of
  spanning requests are span queries of one row.

Every shape a transfer needs follows from the plan, so no metadata travels with tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PeerChunk", "SpanAttention", "RingMember", "RingPrefill", "ESPStepPlan",
           "ring_groups", "stripes"]


@dataclass(slots=True)
class PeerChunk:
    instance: int  # instance holding this earlier chunk
    num_tokens: int  # tokens of the request stored there (KV already written)
    block_ids: list[int]  # that instance's physical block ids for them, in token order


@dataclass(slots=True)
class SpanAttention:
    """One local view of a spanning request scheduled this step (a span query)."""

    req_id: str  # request id in the asking instance's own scheduler (and runner)
    instance: int  # the asking instance (its scheduler scheduled the query tokens)
    num_query_tokens: int  # tokens it computes this step (rows in its forward)
    prefix_len: int  # tokens of the request held before this instance's chunk
    local_len: int  # tokens stored on the asking instance after this step's writes
    local_block_ids: list[int]  # its physical blocks for them (null prefix stripped)
    peers: list[PeerChunk]  # holders of the earlier chunks (all of [0, prefix_len))


def stripes(sizes: list[int]) -> list[np.ndarray]:
    """Which prompt positions each member of a ring prefill computes.

    Member ``j`` computes ``sizes[j]`` positions (the rows its scheduler scheduled) spread
    evenly over the whole prompt, so that every member's causal attention work is in
    proportion to its rows. Equal sizes give LoongServe's striping (position ``t`` on member
    ``t % k``). Otherwise the last position is reserved for the last member (the master: its
    last row is the one vLLM samples) and the other ``T - 1`` positions go, in order, to the
    member whose next row is due soonest: member ``j``'s ``m``-th row is due at
    ``(m + 1/2) / n_j`` of the prompt (ties to the lower member). Vectorised: O(T log T).
    Returns ascending int64 positions per member.
    """
    k = len(sizes)
    if k == 0 or any(n < 0 for n in sizes) or sizes[-1] < 1:
        raise ValueError(f"bad ring prefill sizes {sizes}")
    total = sum(sizes)
    if len(set(sizes)) == 1:
        return [np.arange(j, total, k, dtype=np.int64) for j in range(k)]
    left = list(sizes)
    left[-1] -= 1  # reserved: the last position
    members = np.repeat(np.arange(k), left)
    rank = np.concatenate([np.arange(n) for n in left]) if total > 1 else np.zeros(0)
    due = (rank + 0.5) / np.repeat(np.maximum(left, 1), left)
    order = np.lexsort((members, due))  # by due time, then member
    owner = np.empty(total, dtype=np.int64)
    owner[:total - 1] = members[order]
    owner[total - 1] = k - 1
    return [np.flatnonzero(owner == j) for j in range(k)]


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
    """A prompt prefilled in one step by all its members (ring order = chunk order)."""

    members: list[RingMember]

    def positions(self) -> list[np.ndarray]:
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

    def computed_here(self, instance: int) -> set[str]:
        """Request ids (in ``instance``'s runner) whose attention rows ESP computes this step:
        ring members' rows and span queries. The stock kernel skips them."""
        ids = {s.req_id for s in self.asked_by(instance)}
        ids.update(r.members[j].req_id for _, r, j in self.rings_of(instance))
        return ids
