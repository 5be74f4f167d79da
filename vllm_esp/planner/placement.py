"""Where a request's KV goes: its holders and chunk bounds (standard library only).

The engine (``integration.spanning``) and the simulator place a request that needs several
instances with these functions: contiguous, block-aligned chunks, chunk ``j`` on
``holders[j]``, the last holder (the master) keeps the tail and grows with the decode.
"""

from __future__ import annotations

__all__ = ["even_bounds", "place_chunks", "place_evenly", "blocks_for", "least_work_instance",
           "reroute_waiting"]


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def even_bounds(tokens: int, k: int, block_size: int) -> list[int]:
    """Bounds of ``tokens`` in at most ``k`` equal block-aligned chunks."""
    chunk = -(-tokens // k)
    chunk = max(block_size, -(-chunk // block_size) * block_size)
    return list(range(0, tokens, chunk)) + [tokens]


def place_evenly(tokens: int, order: list[int], headroom: dict[int, int],
                 block_size: int) -> tuple[list[int], list[int]]:
    """Equal block-aligned chunks over the instances ``order`` (the first, with most
    headroom, is the master and keeps the last chunk and the first new token). ValueError
    when an instance has no room for its chunk now."""
    bounds = even_bounds(tokens, len(order), block_size)
    holders = order[1:len(bounds) - 1] + order[:1]
    for j, i in enumerate(holders):
        size = bounds[j + 1] - bounds[j] + (1 if j == len(holders) - 1 else 0)
        if blocks_for(size, block_size) > headroom[i]:
            raise ValueError(f"instance {i} has no room for its chunk of {size} tokens yet")
    return holders, bounds


def place_chunks(tokens: int, order: list[int], headroom: dict[int, int],
                 block_size: int) -> tuple[list[int], list[int]]:
    """Holders and bounds of a request that fills instances: the master (``order[0]``, most
    headroom) keeps the tail of the tokens and the first new token; earlier chunks fill the
    others in whole blocks, in ``order``. ValueError when the free blocks cannot hold it."""
    master, others = order[0], order[1:]
    prefix = max(0, tokens + 1 - headroom[master] * block_size)
    prefix = -(-prefix // block_size) * block_size  # peers hold whole blocks
    if prefix >= tokens:
        raise ValueError("no free blocks for its last chunk")
    holders, bounds, left = [], [0], prefix
    for i in others:
        if left == 0:
            break
        take = min(left, max(0, headroom[i]) * block_size)
        if take:
            holders.append(i)
            bounds.append(bounds[-1] + take)
            left -= take
    if left:
        cap = sum(max(0, h) for h in headroom.values()) * block_size
        raise ValueError(f"needs {tokens + 1} KV tokens; the pool has {cap} free over "
                         f"{len(headroom)} instances (limit: the sum of the instances' pools)")
    holders.append(master)
    bounds.append(tokens)
    return holders, bounds


def least_work_instance(order: list[int], work: dict[int, float], headroom: dict[int, int],
                        need: int) -> int:
    """Length-aware dispatch (ALISE's estimates across instances): of the instances in
    ``order`` with room for the request's ``need`` blocks now, the one with the least
    predicted work left (seconds); ties go to more headroom, then to the earlier in
    ``order``. When none has room: the most headroom (it waits there for blocks)."""
    rank = {i: n for n, i in enumerate(order)}
    fits = [i for i in order if headroom[i] >= need]
    if fits:
        return min(fits, key=lambda i: (work[i], -headroom[i], rank[i]))
    return min(order, key=lambda i: (-headroom[i], rank[i]))


def reroute_waiting(work: dict[int, float], heads: dict[int, tuple[str, float, int]],
                    takers: dict[int, int]) -> list[tuple[str, int, int]]:
    """Requests placed at arrival that still wait move to an instance that would start them
    sooner (work stealing on predicted work). ``work``: predicted seconds left per instance;
    ``heads``: per instance, the next request its queue would start (id, its predicted
    seconds, blocks its prompt needs) among those that may move; ``takers``: instances with
    nothing waiting, with their free blocks. A taker takes the head of the instance with the
    most work when it has room for it and ends up with less work than that instance had.
    Returns ``(request id, from, to)``, at most one move per taker and per source."""
    moves: list[tuple[str, int, int]] = []
    work = dict(work)
    sources = sorted(heads, key=lambda i: (-work[i], i))
    for dst in sorted(takers, key=lambda i: (work[i], i)):
        for src in sources:
            rid, seconds, blocks = heads[src]
            if src != dst and blocks <= takers[dst] and work[dst] + seconds < work[src]:
                moves.append((rid, src, dst))
                work[src] -= seconds
                work[dst] += seconds
                sources.remove(src)
                break
    return moves
