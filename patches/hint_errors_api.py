"""A bad ESP hint in ``vllm_xargs`` is a 400 before the response starts, streaming too.

``validate_hints`` checks hints where vLLM checks sampling parameters, which for a streaming
request happens after the 200 and the first bytes are out (an error event follows). vLLM's
serving classes check the model of every request first (``BaseServing._check_model``, before
any response starts): the hints are checked there as well, and a bad one returns vLLM's own
400 error response naming ``vllm_xargs``.
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch


def _install(serving_cls) -> None:
    from vllm_esp.hints import check_hints
    from vllm_esp_patches.validate_hints import _esp_instances

    original = serving_cls._check_model

    async def _check_model(self, request):
        error = await original(self, request)
        if error is not None:
            return error
        xargs = getattr(request, "vllm_xargs", None)
        client = getattr(self, "engine_client", None)
        config = getattr(client, "vllm_config", None)
        instances = _esp_instances(config) if xargs and config is not None else None
        if instances:
            try:
                check_hints(xargs, instances)
            except ValueError as e:
                return self.create_error_response(str(e), param="vllm_xargs")
        return None

    _check_model.__wrapped__ = original
    serving_cls._check_model = _check_model


PATCH = Patch(
    name="hint_errors_api",
    target="vllm.entrypoints.serve.engine.serving:BaseServing",
    install=_install,
    why="a bad ESP hint is a 400 before a streaming response starts, not an error event",
)
