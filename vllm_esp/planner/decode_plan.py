"""Step 4b — decode scaling plans: masters, scale up, merge, and recompute preemption.

Each decode iteration appends one token per request on its master. A request whose last block
on some instance of its batch has slack needs no new block there; any other request needs one
free block on some instance of the batch. So a batch can run iff

    #requests without slack <= Σ free blocks over the batch's instances.

When it cannot, in order of preference (none moves KV): scale up with an idle instance, merge
with another decode batch that has spare blocks, and only when no instance in the pool has a
free block, preempt (recompute) the most recently joined requests.

Masters: ``m = ceil(batch / minibatch)`` instances with the most free blocks (mini-batches of
``minibatch`` requests keep each master's GEMMs efficient); requests without slack are placed
first so that requests with slack never take the last free block someone else needs.
``relieve_master`` is the engine's incremental form: a request whose master decodes more
than ``minibatch`` requests moves to the least loaded holder of its KV when it needs a new
block anyway.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field

from .kv_pool import KVPool


class PoolView:
    """Read-only view of a :class:`KVPool` with planned migrations overlaid (no copy): the
    pool's own placement dict until the first ``override``, then a ChainMap over it."""

    __slots__ = ("block_size", "placement")

    def __init__(self, pool: KVPool, overrides: dict[str, dict[int, int]] | None = None):
        self.block_size = pool.block_size
        self.placement = ChainMap(overrides, pool.placement) if overrides else pool.placement

    def override(self, req_id: str, where: dict[int, int]) -> None:
        """Plan ``req_id``'s KV as ``where`` ({instance: tokens}); the pool is untouched."""
        if not isinstance(self.placement, ChainMap):
            self.placement = ChainMap({}, self.placement)
        self.placement.maps[0][req_id] = where


@dataclass(slots=True, eq=False)
class BatchView:
    """A decode batch while the manager plans one iteration (mutable scratch; identity equality)."""

    batch_id: int
    instances: set[int]
    req_ids: list[str]
    merged_from: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)  # instances joined by scale up
    removed: list[int] = field(default_factory=list)  # instances that left (scale down)


def slack_instance(pool: PoolView, rid: str, instances) -> int | None:
    for i, t in pool.placement.get(rid, {}).items():
        if i in instances and t % pool.block_size:
            return i
    return None


def block_need(pool: PoolView, batch: BatchView) -> int:
    """Requests of ``batch`` that need a fresh block for this iteration's token."""
    return sum(1 for r in batch.req_ids if slack_instance(pool, r, batch.instances) is None)


def block_supply(free: dict[int, int], batch: BatchView) -> int:
    return sum(free[i] for i in batch.instances)


def drop_empty_instances(pool: PoolView, batch: BatchView) -> None:
    """Scale down: instances holding no KV of the batch leave it (they stay available)."""
    holding = {i for r in batch.req_ids for i in pool.placement.get(r, {})}
    for i in sorted(batch.instances - holding):
        if len(batch.instances) > 1:
            batch.instances.discard(i)
            batch.removed.append(i)


def fix_shortage(
    pool: PoolView,
    free: dict[int, int],
    batch: BatchView,
    idle: list[int],
    others: list[BatchView],
) -> list[str]:
    """Make ``batch`` runnable: scale up, else merge, else preempt. Returns preempted req_ids.

    ``idle`` (instances without a batch) and ``others`` (running batches) are consumed in place;
    merged batches are removed from ``others``.
    """
    while block_need(pool, batch) > block_supply(free, batch):
        if idle:
            inst = scale_up_target({i: free[i] for i in idle}, {})
            if inst is not None:
                idle.remove(inst)
                batch.instances.add(inst)
                batch.added.append(inst)
                continue
        donor = _best_donor(pool, free, others)
        if donor is not None:
            others.remove(donor)
            batch.instances |= donor.instances
            batch.req_ids.extend(donor.req_ids)
            batch.merged_from.append(donor.batch_id)
            batch.merged_from.extend(donor.merged_from)
            continue
        return _preempt_until_fits(pool, free, batch)
    return []


def scale_up_target(idle_room: dict[int, int], busy_room: dict[int, int]) -> int | None:
    """Where a decode short of blocks continues (the order of :func:`fix_shortage`): an idle
    instance (no decode batch) with a free block first, the one with most room (then the
    lowest id); else a busy instance with room, whose batch it joins (a merge), the one with
    most room. None when no instance has a free block. The engine calls this for one request
    at a time; the manager's plan for a whole batch."""
    for room in (idle_room, busy_room):
        fits = {i: r for i, r in room.items() if r >= 1}
        if fits:
            return max(fits, key=lambda i: (fits[i], -i))
    return None


def _best_donor(pool: PoolView, free: dict[int, int], others: list[BatchView]) -> BatchView | None:
    spare = [(block_supply(free, o) - block_need(pool, o), o) for o in others]
    spare = [(s, o) for s, o in spare if s > 0]
    if not spare:
        return None
    return max(spare, key=lambda so: (so[0], -so[1].batch_id))[1]


def _preempt_until_fits(pool: PoolView, free: dict[int, int], batch: BatchView) -> list[str]:
    """Recompute-preempt newest requests first (vLLM's order) until the rest can decode."""
    victims: list[str] = []
    while batch.req_ids and block_need(pool, batch) > block_supply(free, batch):
        rid = batch.req_ids.pop()
        for i, t in pool.placement.get(rid, {}).items():
            free[i] += -(-t // pool.block_size)
        victims.append(rid)
    return victims


def choose_masters(
    pool: PoolView, free: dict[int, int], batch: BatchView, minibatch: int
) -> dict[str, int]:
    """One master per request; decrements ``free`` for every fresh block used."""
    if len(batch.instances) == 1:  # the common case, without the general bookkeeping
        (inst,) = batch.instances
        bs = pool.block_size
        fresh = sum(1 for r in batch.req_ids if not pool.placement.get(r, {}).get(inst, 0) % bs)
        if fresh > free[inst]:
            raise ValueError(f"batch {batch.batch_id}: no KV room for {fresh} new blocks")
        free[inst] -= fresh
        return dict.fromkeys(batch.req_ids, inst)
    n = len(batch.req_ids)
    insts = sorted(batch.instances, key=lambda i: (-free[i], i))
    m = max(1, min(len(insts), -(-n // max(1, minibatch))))
    preferred = insts[:m]
    target = -(-n // m)
    load = {i: 0 for i in insts}
    masters: dict[str, int] = {}
    slack = {r: slack_instance(pool, r, batch.instances) for r in batch.req_ids}
    for rid in sorted(batch.req_ids, key=lambda r: slack[r] is not None):
        s = slack[rid]
        pick = _least_loaded([i for i in preferred if free[i] > 0 and load[i] < target], load)
        if s is not None and (load[s] < target or pick is None):
            pick = s
        if pick is None:
            pick = _least_loaded([i for i in insts if free[i] > 0], load)
        if pick is None:
            raise ValueError(f"batch {batch.batch_id}: no KV room for {rid}")
        if pick != s:
            free[pick] -= 1
        load[pick] += 1
        masters[rid] = pick
    return masters


def _least_loaded(cands: list[int], load: dict[int, int]) -> int | None:
    return min(cands, key=lambda i: (load[i], i)) if cands else None


def relieve_master(loads: dict[int, int], master: int, holders, free: dict[int, int],
                   minibatch: int) -> int | None:
    """Multi-master decode, one request at a time: if its master decodes more than
    ``minibatch`` requests, the holder of its KV (other than the master) with the fewest
    decoding requests and a free block becomes its master. The new master must end up with
    fewer requests than the old one had, so moves never swap back. None: stay."""
    if minibatch < 1 or loads.get(master, 0) <= minibatch:
        return None
    room = [i for i in set(holders) if i != master and free.get(i, 0) > 0
            and loads.get(i, 0) + 1 < loads[master]]
    return min(room, key=lambda i: (loads.get(i, 0), -free[i], i)) if room else None
