"""Every counter of the ESP engine in one typed record; ``/metrics`` is derived from it.

The scheduler, the span manager and the elastic decode steps all count into one ``ESPStats``
(running totals since the engine started); ``snapshot`` turns it, with the levels read from
the pools at that moment, into the ``SchedulerStats.esp`` dict that the stat logger
(``integration/metrics.py``) exports: counters as Prometheus counters, levels as gauges.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ESPStats:
    num_instances: int
    # per instance (index = instance id)
    preemptions: list[int] = field(default_factory=list)  # vLLM recompute preemptions there
    dispatched: list[int] = field(default_factory=list)  # requests sent there first
    esp_bytes_sent: list[int] = field(default_factory=list)  # span-attention bytes it sent
    # pool-wide
    spanning_requests: int = 0  # requests whose KV was spread over several instances
    scale_up: int = 0  # decodes continued on an added instance
    merge: int = 0  # of those, onto an instance running decodes of its own (merge)
    master_moves: int = 0  # decodes moved off a master running too many (relieve)
    scale_down: int = 0  # instances released by a request after its prefill chunk
    span_recompute: int = 0  # spanning requests preempted and placed again
    rerouted: int = 0  # waiting requests moved to an instance that starts them sooner
    parallel_prefills: int = 0  # spanning prefills run over all holders at once
    ring_prefills: int = 0  # of those, run as a striped ring
    batched_ring_prefills: int = 0  # of those, sharing their ring with other requests
    planned_prefill_instances: Counter = field(default_factory=Counter)  # manager's choice
    prefill_instances: Counter = field(default_factory=Counter)  # instances per prefill
    decode_instances: Counter = field(default_factory=Counter)  # instances at finish
    # bytes per token over all layers: a query or output row, its LSE, its K plus V rows
    row_bytes: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self):
        for name in ("preemptions", "dispatched", "esp_bytes_sent"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.num_instances)

    def snapshot(self, usages, counts, instances_alive: int, extra: dict | None = None) -> dict:
        """The ``SchedulerStats.esp`` dict: ``usages`` per instance (used, total blocks),
        ``counts`` per instance (running, waiting)."""
        return {
            "kv_used_blocks": [u.used_blocks for u in usages],
            "kv_total_blocks": [u.total_blocks for u in usages],
            "kv_usage": [u.usage for u in usages],
            "running": [c[0] for c in counts],
            "waiting": [c[1] for c in counts],
            "preemptions": list(self.preemptions),
            "dispatched": list(self.dispatched),
            "esp_bytes_sent": list(self.esp_bytes_sent),
            "spanning_requests": self.spanning_requests,
            "scale_up": self.scale_up,
            "merge": self.merge,
            "master_moves": self.master_moves,
            "scale_down": self.scale_down,
            "span_recompute": self.span_recompute,
            "rerouted": self.rerouted,
            "parallel_prefills": self.parallel_prefills,
            "ring_prefills": self.ring_prefills,
            "batched_ring_prefills": self.batched_ring_prefills,
            "planned_prefill_instances": dict(self.planned_prefill_instances),
            "prefill_instances": dict(self.prefill_instances),
            "decode_instances": dict(self.decode_instances),
            "instances_alive": instances_alive,
            **(extra or {}),
        }

    def count_plan_bytes(self, plan) -> None:
        """Bytes the span attention of a step sends, from the plan's shapes (the workers
        count the same on their communicators)."""
        q_row, lse_row, kv_row = self.row_bytes
        for s in plan.spans:
            for p in s.peers:
                if p.instance == s.instance:
                    continue  # an earlier chunk on the asking instance: computed there
                self.esp_bytes_sent[s.instance] += s.num_query_tokens * q_row
                self.esp_bytes_sent[p.instance] += s.num_query_tokens * (q_row + lse_row)
        for ring in plan.rings:  # member r forwards the shards of r, r-1, ..., r-k+2
            rows = [m.num_rows for m in ring.members]
            k = len(rows)
            for r, m in enumerate(ring.members):
                self.esp_bytes_sent[m.instance] += kv_row * sum(rows[(r - h) % k]
                                                               for h in range(k - 1))


def attention_row_bytes(vllm_config) -> tuple[int, int, int]:
    """Bytes per token over all layers (and TP ranks): a query or output row, its LSE, and
    its K plus V rows."""
    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    layers = mc.get_num_layers(pc)
    heads = mc.get_num_attention_heads(pc) * pc.tensor_parallel_size
    kv_heads = mc.get_num_kv_heads(pc) * pc.tensor_parallel_size
    row = mc.get_head_size() * mc.dtype.itemsize
    return layers * heads * row, layers * heads * 4, 2 * layers * kv_heads * row


def merge_scheduler_stats(stats: list, running: int, waiting: int, kv_usage: float):
    """One vLLM ``SchedulerStats`` for the engine from the instances' ones."""
    from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats

    stats = [s for s in stats if s is not None]
    prefix = PrefixCacheStats()
    for s in stats:
        p = s.prefix_cache_stats
        prefix.reset = prefix.reset or p.reset
        for name in ("requests", "queries", "hits", "preempted_requests",
                     "preempted_queries", "preempted_hits"):
            setattr(prefix, name, getattr(prefix, name) + getattr(p, name))
    skipped = sum(s.num_skipped_waiting_reqs for s in stats)
    return SchedulerStats(
        num_running_reqs=running, num_waiting_reqs=waiting - skipped,
        num_skipped_waiting_reqs=skipped, kv_cache_usage=kv_usage, prefix_cache_stats=prefix,
        kv_cache_eviction_events=[e for s in stats for e in s.kv_cache_eviction_events])
