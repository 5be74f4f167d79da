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
    "esp_bytes_sent": ("vllm_esp:esp_bytes_sent",
                       "Bytes one ESP instance sent for span attention so far (ring-prefill "
                       "K/V shards; queries, partial outputs and LSE)."),
}
# pool-wide counters (no instance label)
_SCALARS = {
    "spanning_requests": ("vllm_esp:num_spanning_requests",
                          "Requests whose KV was spread over several instances so far."),
    "scale_up": ("vllm_esp:num_scale_up", "Decodes continued on an added instance so far."),
    "merge": ("vllm_esp:num_merge",
              "Of the scale-ups, decodes that joined an instance running other decodes (its "
              "batch and theirs now share it) so far."),
    "master_moves": ("vllm_esp:num_master_moves",
                     "Decodes moved to another holder of their KV because their master "
                     "decoded more than esp.decode_minibatch requests, so far."),
    "scale_down": ("vllm_esp:num_scale_down",
                   "Instances released by requests after their prefill chunk so far."),
    "parallel_prefills": ("vllm_esp:num_parallel_prefills",
                          "Prefills run over all their instances in one step so far."),
    "ring_prefills": ("vllm_esp:num_ring_prefills",
                      "Of those, prefills run as a striped ring (K/V passed around) so far."),
    "batched_ring_prefills": ("vllm_esp:num_batched_ring_prefills",
                              "Of the ring prefills, those that shared one ring (one message "
                              "per hop) with other requests' prefills, so far."),
    "span_recompute": ("vllm_esp:num_span_recompute",
                       "Spanning requests preempted (whole pool full) and placed again."),
}
# {instances: requests} histograms, labelled by the number of instances
_BY_INSTANCES = {
    "prefill_instances": ("vllm_esp:requests_by_prefill_instances",
                          "Requests whose prefill used this many instances, so far."),
    "decode_instances": ("vllm_esp:requests_by_decode_instances",
                         "Finished requests whose KV was on this many instances at the end."),
}
_registered: dict[str, Gauge] = {}  # one Gauge per name per process (prometheus forbids dups)


def _gauge(key: str) -> Gauge:
    if key not in _registered:
        if key in _GAUGES:
            (name, doc), labels = _GAUGES[key], ["instance"]
        elif key in _SCALARS:
            (name, doc), labels = _SCALARS[key], []
        else:
            (name, doc), labels = _BY_INSTANCES[key], ["instances"]
        _registered[key] = Gauge(name, doc, labelnames=["model_name", "engine", *labels])
    return _registered[key]


class ESPStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        self.engine_index = engine_index
        self.model_name = vllm_config.model_config.served_model_name

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        esp = getattr(scheduler_stats, "esp", None) if scheduler_stats is not None else None
        if not esp:
            return
        engine = str(engine_idx)
        for key, values in esp.items():
            if key in _GAUGES:
                for instance, value in enumerate(values):
                    _gauge(key).labels(self.model_name, engine, str(instance)).set(value)
            elif key in _SCALARS:
                _gauge(key).labels(self.model_name, engine).set(values)
            elif key in _BY_INSTANCES:
                for k, count in values.items():
                    _gauge(key).labels(self.model_name, engine, str(k)).set(count)

    def log_engine_initialized(self):
        pass
