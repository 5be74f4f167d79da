"""The distributed KV pool as the ESP scheduler sees it: one vLLM block pool per instance.

Each instance's blocks are owned by that instance's ``KVCacheManager`` (inside its
per-instance scheduler), so allocation, prefix caching and freeing stay vLLM's own code. This
class adds what ESP needs on top: the placement map (request -> {instance: blocks}) and the
per-instance / aggregate usage numbers that dispatching and metrics read.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.v1.request import Request, RequestStatus


@dataclass(slots=True)
class InstanceUsage:
    used_blocks: int  # blocks held by requests (or cached, not yet evicted) on this instance
    total_blocks: int  # usable blocks of this instance's pool (vLLM keeps one null block)

    @property
    def usage(self) -> float:
        return self.used_blocks / self.total_blocks if self.total_blocks else 0.0


class DistributedKVPool:
    def __init__(self, instance_schedulers: list, block_size: int):
        self.schedulers = instance_schedulers
        self.block_size = block_size
        # request id -> instance it was dispatched to. In this release a request lives on
        # exactly one instance; placement() reads the blocks it holds there on demand.
        self.instance_of: dict[str, int] = {}
        self._next = 0  # where the round-robin among equally good instances starts
        self.dead: set[int] = set()  # instances lost (instance_health): no room, no requests

    @property
    def num_instances(self) -> int:
        return len(self.schedulers)

    def _block_pool(self, instance: int):
        return self.schedulers[instance].kv_cache_manager.block_pool

    def free_blocks(self, instance: int) -> int:
        if instance in self.dead:
            return 0
        return self._block_pool(instance).get_num_free_blocks()

    def live(self) -> list[int]:
        return [i for i in range(self.num_instances) if i not in self.dead]

    def total_blocks(self, instance: int) -> int:
        return self._block_pool(instance).num_gpu_blocks - 1  # minus the null block

    def usage(self, instance: int) -> InstanceUsage:
        total = self.total_blocks(instance)
        if instance in self.dead:
            return InstanceUsage(used_blocks=0, total_blocks=total)
        return InstanceUsage(used_blocks=total - self.free_blocks(instance), total_blocks=total)

    def usages(self) -> list[InstanceUsage]:
        return [self.usage(i) for i in range(self.num_instances)]

    def aggregate_usage(self) -> float:
        us = self.usages()
        total = sum(u.total_blocks for u in us)
        return sum(u.used_blocks for u in us) / total if total else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def pending_demand(self, instance: int) -> int:
        """Blocks that requests queued on ``instance`` (new or preempted, holding no blocks)
        will need when their prefill starts."""
        return sum(
            self.blocks_for(r.num_tokens)
            for r in self.schedulers[instance].requests.values()
            if r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        )

    def choose_instance(self, request: Request, among: list[int] | None = None) -> int:
        """Most free KV after queued demand; ties go to the instance with fewest requests,
        then round-robin (one request at a time must not always land on instance 0: idle
        instances are all equal). ``among``: only these instances. The caller dispatches
        the request to the returned instance."""
        order = self.in_turn(among)
        chosen = min(order, key=lambda i: (-self.headroom(i), len(self.schedulers[i].requests)))
        self.took(chosen)
        return chosen

    def headroom(self, instance: int) -> int:
        return self.free_blocks(instance) - self.pending_demand(instance)

    def in_turn(self, among: list[int] | None = None) -> list[int]:
        """The live instances of ``among`` (all by default), starting with the next in the
        round-robin: the order that breaks ties between equally good instances."""
        n = self.num_instances
        candidates = [i for i in (among or range(n)) if i not in self.dead] or self.live()
        return sorted(candidates, key=lambda i: (i - self._next) % n)

    def took(self, instance: int) -> None:
        self._next = (instance + 1) % self.num_instances

    def assign(self, request_id: str, instance: int) -> None:
        self.instance_of[request_id] = instance

    def forget(self, request_id: str) -> None:
        self.instance_of.pop(request_id, None)

    def placement(self, request_id: str) -> dict[int, int]:
        """{instance: blocks held there} for a live request ({} if it holds none)."""
        instance = self.instance_of.get(request_id)
        if instance is None:
            return {}
        blocks = self.schedulers[instance].kv_cache_manager.get_block_ids(request_id)
        held = sum(len(g) for g in blocks)
        return {instance: held} if held else {}
