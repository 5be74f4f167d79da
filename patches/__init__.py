"""Every change vllm-esp makes to vLLM's own code at import time, one module per patch.

Installed as the package ``vllm_esp_patches``. Each patch module defines a ``PATCH``
(:class:`vllm_esp_patches._patching.Patch`) that names its target, the vLLM versions it was
written against and why it exists. ``apply_all`` applies them in order, once per process; the
plugin calls it. Supported extension points (``distributed_executor_backend`` as a class path,
``scheduler_cls``, ``additional_config``, ``register_backend``, the plugin groups) need no patch
and are not here.
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch, UnsupportedVLLMVersion, vllm_version

# Order matters only where noted; each entry says why it exists.
PATCH_MODULES = (
    # `distributed_executor_backend="esp"` (stock LLM, --distributed-executor-backend esp):
    # vLLM resolves only its own names or dotted paths.
    "vllm_esp_patches.executor_get_class",
    # Per-instance stats (KV usage per instance) must survive EngineCore -> API server
    # serialisation, which decodes into SchedulerStats' declared fields only.
    "vllm_esp_patches.scheduler_stats_field",
    # `vllm serve ... --executor esp --esp-instances N`: flags folded into EngineArgs fields.
    "vllm_esp_patches.cli_args",
    # ESP options given to vllm.LLM / vllm_esp.LLM (also in additional_config) are checked
    # before the engine config is built: one ValueError, before any process starts.
    "vllm_esp_patches.early_checks",
    # ESP pools KV over instances: max_model_len may exceed one instance's pool.
    "vllm_esp_patches.pooled_capacity",
    # Worker log prefixes and process titles name their ESP instance (Worker_ESP1).
    "vllm_esp_patches.worker_names",
    # VLLM_ESP_* variables: vLLM warns about VLLM_* names it does not know.
    "vllm_esp_patches.env_vars",
    # Per-request ESP hints (vllm_xargs) are checked with vLLM's sampling parameters: a 400.
    "vllm_esp_patches.validate_hints",
    # ... and by the API server before a (streaming) response starts: a 400, not an event.
    "vllm_esp_patches.hint_errors_api",
)

# Applied only when their feature is used (they import optional packages), by that feature.
ON_DEMAND_MODULES = (
    # --esp-instance-backend ray on the CPU build: vLLM's CPU platform declares no Ray device.
    # The ESP executor applies it, and the actors' runtime env runs it as their
    # worker_process_setup_hook.
    "vllm_esp_patches.ray_cpu",
)


def all_patches(on_demand: bool = False) -> list[Patch]:
    """The patches ``apply_all`` applies, and with ``on_demand`` also the feature-bound ones."""
    import importlib

    modules = PATCH_MODULES + (ON_DEMAND_MODULES if on_demand else ())
    return [importlib.import_module(m).PATCH for m in modules]


def apply_all() -> list[str]:
    """Apply every patch (idempotent). Raises UnsupportedVLLMVersion outside the pinned range."""
    return [p.name for p in all_patches() if p.apply()]


__all__ = ["Patch", "UnsupportedVLLMVersion", "apply_all", "all_patches", "vllm_version"]
