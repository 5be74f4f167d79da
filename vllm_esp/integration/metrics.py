"""Per-instance ESP metrics on vLLM's ``/metrics`` (a ``vllm.stat_logger_plugins`` entry).

The ESP scheduler puts per-instance numbers into ``SchedulerStats.esp`` (see
``vllm_esp_patches.scheduler_stats_field``); this logger, running in the API server, turns
them into Prometheus gauges labelled by instance. vLLM's own aggregate gauges (e.g.
``vllm:kv_cache_usage_perc``) keep working and show the pool-wide figure. With a stock
executor the field is absent and this logger does nothing.
"""

from __future__ import annotations

from prometheus_client import Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

# stats key -> (metric name, help)
_GAUGES = {
    "kv_usage": ("vllm_esp:kv_cache_usage_perc", "KV cache usage of one ESP instance (0-1)."),
    "kv_used_blocks": ("vllm_esp:kv_cache_used_blocks", "KV blocks in use on one ESP instance."),
    "kv_total_blocks": ("vllm_esp:kv_cache_total_blocks", "KV blocks of one ESP instance."),
    "running": ("vllm_esp:num_requests_running", "Requests running on one ESP instance."),
    "waiting": ("vllm_esp:num_requests_waiting", "Requests waiting on one ESP instance."),
    "preemptions": ("vllm_esp:num_preemptions", "Preemptions so far on one ESP instance."),
    "dispatched": ("vllm_esp:num_requests_dispatched", "Requests sent to one ESP instance so far."),
}
_registered: dict[str, Gauge] = {}  # one Gauge per name per process (prometheus forbids dups)


def _gauge(key: str) -> Gauge:
    if key not in _registered:
        name, doc = _GAUGES[key]
        _registered[key] = Gauge(name, doc, labelnames=["model_name", "engine", "instance"])
    return _registered[key]


class ESPStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        self.engine_index = engine_index
        self.model_name = vllm_config.model_config.served_model_name

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        esp = getattr(scheduler_stats, "esp", None) if scheduler_stats is not None else None
        if not esp:
            return
        for key, values in esp.items():
            if key not in _GAUGES:
                continue
            gauge = _gauge(key)
            for instance, value in enumerate(values):
                gauge.labels(self.model_name, str(engine_idx), str(instance)).set(value)

    def log_engine_initialized(self):
        pass
