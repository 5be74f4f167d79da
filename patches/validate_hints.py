"""Validate ESP's per-request hints where vLLM validates sampling parameters.

``vllm_xargs`` / ``extra_args`` pass through vLLM untouched; a bad ``esp_instances`` used to
fail inside the engine (HTTP 500, or an error event after a 200 when streaming). Wrapping
``InputProcessor._validate_params`` makes it a ``VLLMValidationError`` in the API server: a 400
naming the hint, like vLLM's own parameter errors. Active only when the engine runs the ESP
executor (the number of instances comes from its ``additional_config``).
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch


def _install(processor_cls) -> None:
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams

    from vllm_esp.hints import check_hints

    original = processor_cls._validate_params

    class ESPHintError(VLLMValidationError, ValueError):
        """A 400 from the API server, a ValueError in Python (as the brief wants both)."""

    def _validate_params(self, params, *args, **kwargs):
        result = original(self, params, *args, **kwargs)
        instances = _esp_instances(self.vllm_config)
        if instances and isinstance(params, SamplingParams):
            try:
                check_hints(params.extra_args, instances)
            except ValueError as e:
                raise ESPHintError(str(e), parameter="vllm_xargs") from None
        return result

    _validate_params.__wrapped__ = original
    processor_cls._validate_params = _validate_params


def _esp_instances(vllm_config) -> int | None:
    """Instances of an ESP engine (None for a stock executor: hints mean nothing there)."""
    from vllm_esp.config import EXECUTOR_QUALNAME, ESPConfig

    backend = vllm_config.parallel_config.distributed_executor_backend
    name = backend if isinstance(backend, str) else \
        f"{getattr(backend, '__module__', '')}.{getattr(backend, '__qualname__', '')}"
    if name not in (EXECUTOR_QUALNAME, "esp"):
        return None
    return ESPConfig.from_vllm_config(vllm_config).instances


PATCH = Patch(
    name="validate_hints",
    target="vllm.v1.engine.input_processor:InputProcessor",
    install=_install,
    why="a bad esp_instances / esp_prefill_instances hint is a 400 naming it, not a 500",
)
