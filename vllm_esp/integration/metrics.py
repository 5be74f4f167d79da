"""Per-instance ESP metrics on vLLM's ``/metrics`` (a ``vllm.stat_logger_plugins`` entry).

The ESP scheduler puts per-instance numbers into ``SchedulerStats.esp`` (see
``vllm_esp_patches.scheduler_stats_field``); this logger, running in the API server, turns
them into Prometheus metrics. Levels (KV usage, running and waiting requests) are gauges,
labelled by instance; cumulative numbers (requests dispatched, preemptions, bytes sent,
scale-ups, ...) are counters, exposed with ``_total`` as vLLM's own counters are
(``vllm_esp:num_preemptions_total``). vLLM's aggregate metrics (e.g.
``vllm:kv_cache_usage_perc``) keep working and show the pool-wide figure. With a stock
executor only the length-prediction error is there (``--scheduler-cls`` AliseScheduler),
else nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from vllm.v1.metrics.loggers import StatLoggerBase

# stats key -> (metric name, help); per-instance levels
_GAUGES = {
    "kv_usage": ("vllm_esp:kv_cache_usage_perc", "KV cache usage of one ESP instance (0-1)."),
    "kv_used_blocks": ("vllm_esp:kv_cache_used_blocks", "KV blocks in use on one ESP instance."),
    "kv_total_blocks": ("vllm_esp:kv_cache_total_blocks", "KV blocks of one ESP instance."),
    "running": ("vllm_esp:num_requests_running", "Requests running on one ESP instance."),
    "waiting": ("vllm_esp:num_requests_waiting", "Requests waiting on one ESP instance."),
}
# pool-wide levels (no instance label)
_LEVELS = {
    "instances_alive": ("vllm_esp:instances_alive",
                        "ESP instances serving (fewer than configured after an instance was "
                        "lost: the engine keeps serving on the others)."),
}
# per-instance counters (the scheduler reports running totals)
_COUNTERS = {
    "preemptions": ("vllm_esp:num_preemptions", "Preemptions on one ESP instance."),
    "dispatched": ("vllm_esp:num_requests_dispatched", "Requests sent to one ESP instance."),
    "esp_bytes_sent": ("vllm_esp:esp_bytes_sent",
                       "Bytes one ESP instance sent for span attention (ring-prefill K/V "
                       "shards; queries, partial outputs and LSE)."),
}
# pool-wide counters (no instance label)
_SCALARS = {
    "spanning_requests": ("vllm_esp:num_spanning_requests",
                          "Requests whose KV was spread over several instances."),
    "scale_up": ("vllm_esp:num_scale_up", "Decodes continued on an added instance."),
    "merge": ("vllm_esp:num_merge",
              "Of the scale-ups, decodes that joined an instance running other decodes (its "
              "batch and theirs now share it)."),
    "master_moves": ("vllm_esp:num_master_moves",
                     "Decodes moved to another holder of their KV because their master "
                     "decoded more than esp.decode_minibatch requests."),
    "scale_down": ("vllm_esp:num_scale_down",
                   "Instances released by requests after their prefill chunk."),
    "parallel_prefills": ("vllm_esp:num_parallel_prefills",
                          "Prefills run over all their instances in one step."),
    "ring_prefills": ("vllm_esp:num_ring_prefills",
                      "Of those, prefills run as a striped ring (K/V passed around)."),
    "batched_ring_prefills": ("vllm_esp:num_batched_ring_prefills",
                              "Of the ring prefills, those that shared one ring (one message "
                              "per hop) with other requests' prefills."),
    "span_recompute": ("vllm_esp:num_span_recompute",
                       "Spanning requests preempted (whole pool full) and placed again."),
    "rerouted": ("vllm_esp:num_requests_rerouted",
                 "Waiting requests moved to an instance with less predicted work "
                 "(--esp-policy sjf/alise)."),
}
# {instances: requests} counts, labelled by the number of instances
_BY_INSTANCES = {
    "prefill_instances": ("vllm_esp:requests_by_prefill_instances",
                          "Requests whose prefill used this many instances."),
    "decode_instances": ("vllm_esp:requests_by_decode_instances",
                         "Finished requests whose KV was on this many instances at the end."),
}
# length-prediction error (AliseScheduler), labelled by predictor
_PREDICTION = {
    "mae": ("vllm_esp:length_prediction_mae",
            "Mean absolute error of predicted output lengths over the last finished requests "
            "(tokens)."),
    "spearman": ("vllm_esp:length_prediction_spearman",
                 "Rank correlation of predicted vs actual output lengths over the last "
                 "finished requests."),
}
_registered: dict[str, Gauge | Counter] = {}  # one metric per name per process (no dups)


def _metric(key: str) -> Gauge | Counter:
    if key not in _registered:
        if key in _GAUGES:
            (name, doc), labels, cls = _GAUGES[key], ["instance"], Gauge
        elif key in _COUNTERS:
            (name, doc), labels, cls = _COUNTERS[key], ["instance"], Counter
        elif key in _SCALARS:
            (name, doc), labels, cls = _SCALARS[key], [], Counter
        elif key in _LEVELS:
            (name, doc), labels, cls = _LEVELS[key], [], Gauge
        elif key in _PREDICTION:
            (name, doc), labels, cls = _PREDICTION[key], ["predictor"], Gauge
        else:
            (name, doc), labels, cls = _BY_INSTANCES[key], ["instances"], Counter
        _registered[key] = cls(name, doc, labelnames=["model_name", "engine", *labels])
    return _registered[key]


class ESPStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0):
        self.engine_index = engine_index
        self.model_name = vllm_config.model_config.served_model_name
        # last running total seen per (key, labels): counters advance by the difference
        self._totals: dict[tuple, float] = {}

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        esp = getattr(scheduler_stats, "esp", None) if scheduler_stats is not None else None
        if not esp:
            return
        engine = str(engine_idx)
        for key, values in esp.items():
            if key in _GAUGES:
                for instance, value in enumerate(values):
                    _metric(key).labels(self.model_name, engine, str(instance)).set(value)
            elif key in _COUNTERS:
                for instance, value in enumerate(values):
                    self._advance(key, (self.model_name, engine, str(instance)), value)
            elif key in _SCALARS:
                self._advance(key, (self.model_name, engine), values)
            elif key in _LEVELS:
                _metric(key).labels(self.model_name, engine).set(values)
            elif key in _BY_INSTANCES:
                for k, count in values.items():
                    self._advance(key, (self.model_name, engine, str(k)), count)
            elif key == "prediction" and values.get("count"):
                for name in _PREDICTION:
                    _metric(name).labels(self.model_name, engine,
                                         values["predictor"]).set(values[name])

    def _advance(self, key: str, labels: tuple, total: float) -> None:
        """Bring the counter to the scheduler's running ``total`` (a counter only goes up;
        a total below the last one, which one engine never reports, is taken as a restart)."""
        child = _metric(key).labels(*labels)  # the series shows from its first report, at 0
        last = self._totals.get((key, labels), 0)
        if total > last:
            child.inc(total - last)
        self._totals[(key, labels)] = total

    def log_engine_initialized(self):
        pass
