"""Per-iteration plans the ESP attention ops consume, and the stripe arithmetic.

The plans are built by the scheduler/integration layer once per iteration and shared by all
layers; they are identical on every member of the ESP group except ``rank_in_group`` and the
rank-local physical fields (slots, block tables). Everything a rank needs to know about the
shapes its peers send is derivable from a plan, so no shape metadata travels.

Striping: in a prefill over ``k`` ranks, token ``t`` (0-based position inside the request's
prefill) of every request lives on logical rank ``t % k``; rank ``r`` holds positions
``r, r+k, r+2k, ...`` in increasing order. Local tensors are packed request-major: all local
tokens of request 0, then request 1, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "RingPrefillPlan",
    "DecodePlan",
    "stripe_len",
    "stripe_counts",
    "striped_positions",
    "shard_slot_mapping",
]


def stripe_len(seq_len: int, k: int, r: int) -> int:
    """Tokens of a ``seq_len``-token request that land on logical rank ``r`` of ``k``."""
    return max(0, (seq_len - r + k - 1) // k)


def stripe_counts(seq_lens: list[int], k: int, r: int) -> list[int]:
    """Per-request local token counts on rank ``r`` (tokens, request order)."""
    return [stripe_len(n, k, r) for n in seq_lens]


def striped_positions(seq_lens: list[int], k: int, r: int) -> torch.Tensor:
    """Global positions (within each request) of rank ``r``'s packed local tokens. int64."""
    parts = [torch.arange(r, max(r, n), k, dtype=torch.int64) for n in seq_lens]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


@dataclass(slots=True)
class RingPrefillPlan:
    """One prefill batch striped over an ESP group, as seen by one member.

    Attributes:
        group_ranks: ranks (in the ESP process group) of the batch's instances, in ring order;
            ``k = len(group_ranks)``. Logical stripe index = index in this list.
        rank_in_group: this rank's logical stripe index ``r`` (0 <= r < k).
        seq_lens: prompt tokens of each request in this prefill (whole request, all ranks),
            request order. Requests shorter than ``k`` leave some ranks with zero tokens.
        keep_ranges: per request, ``(begin, end)`` token positions (end exclusive) whose K/V
            this rank stores in its paged cache while shards pass (proactive migration).
            ``None`` or an empty range = store nothing for that request.
        keep_slots: int64 ``[sum(end - begin)]`` physical slot ids
            (``block_id * block_size + offset``) of the kept tokens, request order then
            position order. ``None`` when nothing is kept.
    """

    group_ranks: list[int]
    rank_in_group: int
    seq_lens: list[int]
    keep_ranges: list[tuple[int, int]] | None = None
    keep_slots: torch.Tensor | None = None
    # derived per source rank, computed on first use and reused by every layer
    _slot_maps: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = len(self.group_ranks)
        if not 0 <= self.rank_in_group < k:
            raise ValueError(f"rank_in_group {self.rank_in_group} outside group of {k}")
        if any(n < 0 for n in self.seq_lens):
            raise ValueError("negative sequence length")
        if self.keep_ranges is not None:
            if len(self.keep_ranges) != len(self.seq_lens):
                raise ValueError("one keep range per request")
            kept = 0
            for (b, e), n in zip(self.keep_ranges, self.seq_lens):
                if not (0 <= b <= e <= n):
                    raise ValueError(f"keep range {(b, e)} outside request of {n} tokens")
                kept += e - b
            if kept and (self.keep_slots is None or self.keep_slots.numel() != kept):
                raise ValueError(f"keep_slots must hold {kept} slot ids")

    @property
    def k(self) -> int:
        return len(self.group_ranks)

    def counts(self, r: int) -> list[int]:
        """Per-request tokens on logical rank ``r``."""
        return stripe_counts(self.seq_lens, self.k, r)


def shard_slot_mapping(plan: RingPrefillPlan, src: int) -> torch.Tensor | None:
    """Slot of each token of logical rank ``src``'s shard on *this* rank, or -1 (PAD: skip).

    Returns int64 ``[tokens in src's shard]`` or ``None`` if no token of that shard is kept.
    """
    if plan.keep_ranges is None or plan.keep_slots is None:
        return None
    if src not in plan._slot_maps:
        plan._slot_maps[src] = _build_slot_mapping(plan, src)
    return plan._slot_maps[src]


def _build_slot_mapping(plan: RingPrefillPlan, src: int) -> torch.Tensor | None:
    k = plan.k
    maps, slot_off, any_kept = [], 0, False
    for (b, e), n in zip(plan.keep_ranges, plan.seq_lens):
        pos = torch.arange(src, max(src, n), k, dtype=torch.int64)
        m = torch.full_like(pos, -1)
        sel = (pos >= b) & (pos < e)
        if bool(sel.any()):
            any_kept = True
            m[sel] = plan.keep_slots[slot_off + pos[sel] - b].to(torch.int64)
        maps.append(m)
        slot_off += e - b
    return torch.cat(maps) if any_kept else None


@dataclass(slots=True)
class DecodePlan:
    """One decode batch over an ESP group (multi-master), as seen by one member.

    Attributes:
        group_ranks: ranks (in the ESP process group) of the batch's instances.
        rank_in_group: this rank's index in ``group_ranks``.
        masters: per request (batch order), index in ``group_ranks`` of its master. A master's
            query rows are its requests in batch order.
        kv_lens: ``kv_lens[i][j]`` = tokens of request ``i`` whose K/V is stored on group
            member ``j`` (including the master's newly appended token). Any split is allowed,
            including zeros on the master.
        block_table: int32 ``[num_requests, max_blocks]`` this rank's physical block ids for
            each request (rows of requests it holds nothing of are ignored).
    """

    group_ranks: list[int]
    rank_in_group: int
    masters: list[int]
    kv_lens: list[list[int]]
    block_table: torch.Tensor

    def __post_init__(self) -> None:
        k = len(self.group_ranks)
        if not 0 <= self.rank_in_group < k:
            raise ValueError("rank_in_group outside the group")
        if len(self.kv_lens) != len(self.masters):
            raise ValueError("one kv_lens row per request")
        for m, row in zip(self.masters, self.kv_lens):
            if not 0 <= m < k or len(row) != k or any(x < 0 for x in row):
                raise ValueError("bad master index or kv_lens row")

    @property
    def k(self) -> int:
        return len(self.group_ranks)

    def local_seq_lens(self) -> torch.Tensor:
        """int32 ``[num_requests]``: tokens of each request stored on this rank."""
        r = self.rank_in_group
        return torch.tensor([row[r] for row in self.kv_lens], dtype=torch.int32)

    def requests_of(self, master: int, holder: int | None = None) -> list[int]:
        """Batch indices mastered by ``master`` (and held on ``holder`` when given)."""
        return [
            i
            for i, m in enumerate(self.masters)
            if m == master and (holder is None or self.kv_lens[i][holder] > 0)
        ]
