"""Step 4a — keep ranges: where each prefilled token's KV stays after the ring prefill.

Every KV shard visits every instance of the ESP group during ring attention, so any keep
placement is free. We pack, so that as few instances as possible stay busy with the new
requests' KV (the rest scale down after the prefill): instances sorted by free blocks (most
first), requests longest first, each request filled front to back. A piece that does not
finish its request takes all remaining free blocks of the instance (a whole-block multiple of
tokens), so only a request's last piece leaves a partial block: the packing uses exactly
``Σ ceil(l / block_size)`` blocks, the bound the batching DP checks.
"""

from __future__ import annotations

from .types import KeepRange


def pack_keep_ranges(
    requests: list[tuple[str, int]],
    free_blocks: dict[int, int],
    block_size: int,
) -> dict[str, list[KeepRange]]:
    """Assign ``[begin, end)`` token ranges of each ``(req_id, prefill_len)`` to instances.

    ``free_blocks`` (instance -> free blocks) is decremented in place. Raises ValueError when the
    instances cannot hold the requests (the DP never asks for that).
    """
    order = sorted(free_blocks, key=lambda i: (-free_blocks[i], i))
    keep: dict[str, list[KeepRange]] = {}
    pos = 0  # index into order: instances before pos are full
    for rid, length in sorted(requests, key=lambda r: (-r[1], r[0])):
        ranges: list[KeepRange] = []
        begin = 0
        while begin < length:
            while pos < len(order) and free_blocks[order[pos]] == 0:
                pos += 1
            if pos == len(order):
                raise ValueError(f"no KV room for {rid} ({length - begin} tokens left)")
            inst = order[pos]
            room = free_blocks[inst] * block_size
            take = min(room, length - begin)
            ranges.append(KeepRange(inst, begin, begin + take))
            free_blocks[inst] -= -(-take // block_size)
            begin += take
        keep[rid] = ranges
    return keep
