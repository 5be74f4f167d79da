"""Check the ESP options before vLLM builds its config, in the user's process.

``vllm.LLM(..., distributed_executor_backend="esp", additional_config={"esp": {...}})`` and
``vllm_esp.LLM(..., esp_instances=N)`` reach the ESP executor only inside the engine process,
whose failure shows as "Engine core initialization failed" after tens of lines of traceback;
inside ``VllmConfig`` validation a ValueError comes wrapped in pydantic's multi-line report.
``EngineArgs.create_engine_config`` is where both routes start (``vllm serve`` too, after the
``cli_args`` patch has already refused bad flags while parsing), so the ESP options are
checked at its start (:func:`vllm_esp.options.check_engine_fields`): one ValueError, one
line, before any process starts.
"""

from __future__ import annotations

import dataclasses

from vllm_esp_patches._patching import Patch


def _install(engine_args_cls) -> None:
    from vllm_esp import options

    original = engine_args_cls.create_engine_config

    def create_engine_config(self, *args, **kwargs):
        fields = {f.name: getattr(self, f.name, None) for f in dataclasses.fields(self)}
        options.check_engine_fields(fields)
        config = original(self, *args, **kwargs)
        if options.uses_esp(fields):
            from vllm_esp.integration.capacity import check_pooled_capacity

            check_pooled_capacity(config)  # max_model_len vs the pools, when known up front
        return config

    create_engine_config.__wrapped__ = original
    engine_args_cls.create_engine_config = create_engine_config


PATCH = Patch(
    name="early_checks",
    target="vllm.engine.arg_utils:EngineArgs",
    install=_install,
    why="bad ESP options (also in additional_config) fail with one line before any process starts",
)
