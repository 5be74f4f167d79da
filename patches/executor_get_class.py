"""Let ``distributed_executor_backend="esp"`` name the ESP executor.

vLLM's ``Executor.get_class`` knows "ray", "mp", "uni", "external_launcher" and dotted paths;
a bare "esp" would go to ``resolve_obj_by_qualname`` and fail. There is no executor registry,
so the static method is wrapped. Everything else falls through to vLLM unchanged.
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch

ESP_NAME = "esp"


def _install(executor_cls) -> None:
    original = executor_cls.get_class

    def get_class(vllm_config):
        if vllm_config.parallel_config.distributed_executor_backend == ESP_NAME:
            from vllm_esp.integration.executor import ESPExecutor

            return ESPExecutor
        return original(vllm_config)

    get_class.__wrapped__ = original
    executor_cls.get_class = staticmethod(get_class)


PATCH = Patch(
    name="executor_get_class",
    target="vllm.v1.executor.abstract:Executor",
    install=_install,
    why='distributed_executor_backend="esp" resolves to ESPExecutor',
)
