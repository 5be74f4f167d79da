"""Distributed KV pool accounting: blocks per instance and token placement per request.

ESP pools the KV caches of all instances: one request may keep tokens on several instances
(any multiset of token ranges — decoding does not care about order, K is stored after RoPE).
On each instance a request's tokens occupy their own paged blocks, so a request holding ``t``
tokens on an instance uses ``ceil(t / block_size)`` of that instance's blocks. This module only
counts; the engine's per-instance ``BlockPool`` owns the real block ids.

Invariant: ``used[i] == sum(ceil(t / block_size) for each request's t on i) <= capacity[i]``.
"""

from __future__ import annotations


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed for ``tokens`` tokens of one request on one instance."""
    return -(-tokens // block_size)


class KVPool:
    """Per-instance block counters plus ``placement[req_id] = {instance_id: tokens}``."""

    __slots__ = ("block_size", "capacity", "used", "placement")

    def __init__(self, capacity: dict[int, int], block_size: int):
        self.block_size = block_size  # tokens per block
        self.capacity = dict(capacity)  # instance -> blocks
        self.used = {i: 0 for i in capacity}  # instance -> blocks in use
        self.placement: dict[str, dict[int, int]] = {}  # req -> {instance: tokens}

    # ---- queries -------------------------------------------------------------------------
    def free_blocks(self, inst: int) -> int:
        return self.capacity[inst] - self.used[inst]

    def total_free_blocks(self) -> int:
        return sum(self.capacity.values()) - sum(self.used.values())

    def tokens_on(self, req_id: str, inst: int) -> int:
        return self.placement.get(req_id, {}).get(inst, 0)

    def room_tokens(self, req_id: str, inst: int) -> int:
        """Tokens ``req_id`` can still append on ``inst``: free blocks plus its last-block slack."""
        cur = self.tokens_on(req_id, inst)
        slack = blocks_for(cur, self.block_size) * self.block_size - cur
        return slack + self.free_blocks(inst) * self.block_size

    def blocks_to_add(self, req_id: str, inst: int, tokens: int) -> int:
        cur = self.tokens_on(req_id, inst)
        return blocks_for(cur + tokens, self.block_size) - blocks_for(cur, self.block_size)

    def can_add(self, req_id: str, inst: int, tokens: int) -> bool:
        return self.blocks_to_add(req_id, inst, tokens) <= self.free_blocks(inst)

    # ---- updates -------------------------------------------------------------------------
    def add(self, req_id: str, inst: int, tokens: int) -> None:
        """Append ``tokens`` of ``req_id`` on ``inst``; raises if the instance would over-commit."""
        need = self.blocks_to_add(req_id, inst, tokens)
        if need > self.free_blocks(inst):
            raise ValueError(
                f"instance {inst} over-committed: {req_id} needs {need} blocks, "
                f"{self.free_blocks(inst)} free"
            )
        self.used[inst] += need
        where = self.placement.setdefault(req_id, {})
        where[inst] = where.get(inst, 0) + tokens

    def remove(self, req_id: str, inst: int, tokens: int) -> None:
        cur = self.tokens_on(req_id, inst)
        if tokens > cur:
            raise ValueError(f"{req_id} holds {cur} tokens on {inst}, cannot remove {tokens}")
        self.used[inst] -= blocks_for(cur, self.block_size) - blocks_for(cur - tokens, self.block_size)
        where = self.placement[req_id]
        if cur == tokens:
            del where[inst]
        else:
            where[inst] = cur - tokens

    def move(self, req_id: str, src: int, dst: int, tokens: int) -> None:
        """Migrate tokens between instances (compaction)."""
        if not self.can_add(req_id, dst, tokens):
            raise ValueError(f"instance {dst} has no room for {tokens} tokens of {req_id}")
        self.remove(req_id, src, tokens)
        self.add(req_id, dst, tokens)

    def free(self, req_id: str) -> None:
        """Release all KV of a finished or preempted request."""
        for inst, tokens in self.placement.pop(req_id, {}).items():
            self.used[inst] -= blocks_for(tokens, self.block_size)
