"""Declare the ``VLLM_ESP_*`` variables to vLLM, which warns about any ``VLLM_*`` it does not
know ("Unknown vLLM environment variable detected: VLLM_ESP_DEBUG_PLAN", or refuses to start
with ``--fail-on-environ-validation``). They are read through ``vllm_esp.envs``; vLLM only
learns their names (and can read them as ``vllm.envs.VLLM_ESP_*``)."""

from __future__ import annotations

from vllm_esp_patches._patching import Patch


def _install(module) -> None:
    from vllm_esp import envs

    table = getattr(module, "environment_variables", None)
    if not isinstance(table, dict):
        raise TypeError("vllm.envs.environment_variables moved; the ESP env-vars patch "
                        "needs review")
    for name in dir(envs):
        table.setdefault(name, lambda name=name: getattr(envs, name))


PATCH = Patch(
    name="env_vars",
    target="vllm.envs",
    install=_install,
    why="VLLM_ESP_* environment variables are known to vLLM (no 'unknown variable' warning)",
)
