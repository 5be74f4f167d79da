"""The stat-logger plugin: running totals from the ESP scheduler become Prometheus counters
(advanced by their difference), levels become gauges (no engine: a fake stats object)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from vllm_esp.integration.metrics import ESPStatLogger

MODEL = "metrics-unit-test"


def _value(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, {"model_name": MODEL, "engine": "0", **labels})


def test_running_totals_advance_counters_and_levels_set_gauges():
    logger = ESPStatLogger(SimpleNamespace(model_config=SimpleNamespace(served_model_name=MODEL)))
    stats = SimpleNamespace(esp={"dispatched": [2, 0], "kv_usage": [0.5, 0.0], "scale_up": 0,
                                 "prefill_instances": {1: 2}})
    logger.record(stats, None)
    assert _value("vllm_esp:num_requests_dispatched_total", instance="0") == 2
    assert _value("vllm_esp:num_requests_dispatched_total", instance="1") == 0  # shown at 0
    assert _value("vllm_esp:num_scale_up_total") == 0
    stats.esp = {"dispatched": [3, 4], "kv_usage": [0.25, 0.0], "scale_up": 1,
                 "prefill_instances": {1: 2, 2: 1}}
    logger.record(stats, None)
    logger.record(stats, None)  # the same totals again add nothing
    assert _value("vllm_esp:num_requests_dispatched_total", instance="0") == 3
    assert _value("vllm_esp:num_requests_dispatched_total", instance="1") == 4
    assert _value("vllm_esp:num_scale_up_total") == 1
    assert _value("vllm_esp:requests_by_prefill_instances_total", instances="1") == 2
    assert _value("vllm_esp:requests_by_prefill_instances_total", instances="2") == 1
    assert _value("vllm_esp:kv_cache_usage_perc", instance="0") == 0.25  # a gauge goes down


def test_stats_without_the_esp_field_record_nothing():
    logger = ESPStatLogger(SimpleNamespace(model_config=SimpleNamespace(served_model_name=MODEL)))
    logger.record(SimpleNamespace(), None)
    logger.record(None, None)
