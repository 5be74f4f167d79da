"""Where a request's KV goes: its holders and chunk bounds (standard library only).

The engine (``integration.spanning``) and the simulator place a request that needs several
instances with these functions: contiguous, block-aligned chunks, chunk ``j`` on
``holders[j]``, the last holder (the master) keeps the tail and grows with the decode.
"""

from __future__ import annotations

__all__ = ["even_bounds", "place_chunks", "place_evenly", "blocks_for"]


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
