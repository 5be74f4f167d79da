"""Bad ESP options through the Python API fail with one ValueError in the caller's process,
before any engine or worker process starts (as the ``--esp-*`` flags of ``vllm serve`` do):
``vllm_esp.LLM(esp_instances=...)`` and stock ``vllm.LLM(additional_config={"esp": ...})``."""

from __future__ import annotations

import psutil
import pytest


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("route,kwargs,message", [
    ("esp", {"executor": "esp", "esp_instances": 64}, "exceed this machine's limit"),
    ("vllm", {"distributed_executor_backend": "esp",
              "additional_config": {"esp": {"instances": 64}}}, "exceed this machine's limit"),
    ("vllm", {"distributed_executor_backend": "esp",
              "additional_config": {"esp": {"instances": 0}}}, "positive integer"),
    ("vllm", {"distributed_executor_backend": "vllm_esp.integration.executor.ESPExecutor",
              "additional_config": {"esp": {"instances": 2, "policy": "lifo"}}}, "--esp-policy"),
    ("vllm", {"distributed_executor_backend": "esp",
              "additional_config": {"esp": {"instancs": 2}}}, "unknown ESP option"),
    # max_model_len above the sum of the pools (2 x 2 MiB; 1 KiB per token in float32)
    ("esp", {"executor": "esp", "esp_instances": 2, "max_model_len": 8192,
             "kv_cache_memory_bytes": 2 << 20}, "--max-model-len 8,192 needs 8.0 MiB"),
])
def test_llm_config_errors_are_one_value_error_before_any_process(tiny_models, route, kwargs,
                                                                   message):
    import vllm

    import vllm_esp

    cls = vllm_esp.LLM if route == "esp" else vllm.LLM
    before = _children()
    with pytest.raises(ValueError, match=message) as info:
        cls(tiny_models["llama"], dtype="float32", enforce_eager=True, **kwargs)
    assert "\n" not in str(info.value)
    assert _children() - before == set(), "no engine process may start"
