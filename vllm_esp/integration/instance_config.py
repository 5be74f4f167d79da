"""How one ESP instance's config differs from the engine's, and what ESP refuses at start.

``ESPExecutor`` builds each instance from a deep copy of the engine config; on a GPU the
instance gets the ESP GPU worker and the attention backend its override extends
(``fit_gpu_instance``) and its own GPUs (``place_gpu_instance``). ``validate`` refuses, with a
one-line reason, configurations ESP cannot run.
"""

from __future__ import annotations

from vllm_esp import qualnames
from vllm_esp.config import ESPConfig, check_worker_limit


def fit_gpu_instance(config) -> dict[str, str]:
    """An instance's config for the ESP GPU worker (``esp_gpu_worker``): its worker class and
    the attention backend its override extends (FLASH_ATTN; TRITON_ATTN for float32 models,
    which flash-attn cannot compute). torch.compile and CUDA graphs stay
    as configured: the ESP runner runs a step with span traffic without a graph (eager
    pieces), every other step as vLLM decides. Returns the environment its processes need
    (V1 model runner, vLLM's PyTorch sampler, whose seeded draws a scale-up replays)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_esp.integration.esp_gpu_worker import GPU_ENV, attention_backend_for

    config.parallel_config.worker_cls = qualnames.GPU_WORKER
    name, _ = attention_backend_for(config.model_config.dtype)
    config.attention_config.backend = AttentionBackendEnum[name]
    return dict(GPU_ENV)


def place_gpu_instance(config, placement) -> dict[str, str]:
    """The instance sees only its GPUs; sharing them, it takes its share of the memory."""
    if placement.sharing > 1:
        cc = config.cache_config
        cc.gpu_memory_utilization = cc.gpu_memory_utilization / placement.sharing
    return placement.env


SWAP_CONNECTOR = "SwapConnector"  # vllm_esp.scheduling.swap_connector: one per instance


def check_config(vllm_config) -> ESPConfig:
    """The ESP options of ``vllm_config``, or ValueError with a one-line reason (with the
    plugin loaded, ``vllm_esp.options.check_engine_fields`` refused most of these already,
    in the user's process)."""
    esp = ESPConfig.from_vllm_config(vllm_config)
    validate(vllm_config, esp)
    return esp


def validate(vllm_config, esp: ESPConfig) -> None:
    """Refuse, with a one-line reason, configurations ESP cannot run."""
    pc = vllm_config.parallel_config
    if pc.pipeline_parallel_size > 1:
        raise ValueError("--executor esp does not support pipeline parallelism")
    if pc.data_parallel_size > 1:
        raise ValueError("--executor esp replaces data parallelism; use --esp-instances instead")
    if vllm_config.speculative_config is not None:
        raise ValueError("--executor esp does not support speculative decoding yet")
    kvt = vllm_config.kv_transfer_config
    if kvt is not None and kvt.kv_connector != SWAP_CONNECTOR:
        raise ValueError(f"--executor esp supports only the {SWAP_CONNECTOR} KV connector "
                         f"(per-instance swap to host memory), got {kvt.kv_connector}")
    if pc.worker_extension_cls not in ("", None, qualnames.WORKER_EXTENSION):
        raise ValueError("--executor esp installs its own worker extension; "
                         f"--worker-extension-cls {pc.worker_extension_cls} cannot be combined")
    from vllm.platforms import current_platform

    check_worker_limit(esp, on_cpu=current_platform.is_cpu())
