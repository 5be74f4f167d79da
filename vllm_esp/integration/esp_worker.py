"""ESP worker side on the CPU: vLLM's CPU worker with the ESP runner (``esp_runner``) and a
``CPU_ATTN`` backend whose impl computes the rows of spread requests with the ESP stack
(``esp_attention``); installed by the ESP executor (``worker_cls``) when it runs more than
one instance. ``esp_gpu_worker`` is the GPU twin.

Private vLLM 0.32 internals touched here (``CPUWorker.init_device`` building the runner, the
runner's class) and in the two modules above are checked when the worker starts
(``ESPWorkerMixin.__init__``): a moved name fails loudly, it is never silently wrong.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadataBuilder,
)
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from vllm_esp.integration.esp_attention import (
    SUBSET_FIELDS,
    ESPAttentionMixin,
    ESPMetadataBuilderMixin,
)
from vllm_esp.integration.esp_runner import ESPRunnerMixin, check_runner_internals
from vllm_esp.integration.spanning import views
from vllm_esp import qualnames
from vllm_esp.ops.kv_cache import CpuPagedKV

BACKEND_QUALNAME = qualnames.CPU_ATTENTION_BACKEND


def check_internals(*extra: tuple[type, str]) -> None:
    """Fail at worker start if vLLM moved what the ESP worker relies on."""
    from vllm.v1.attention.backend import CommonAttentionMetadata
    from vllm.v1.worker.block_table import BlockTable
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    check_runner_internals(GPUModelRunner)
    for owner, name in extra:
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(f"vLLM moved {owner.__name__}.{name}; ESP worker needs review")
    fields = set(CommonAttentionMetadata.__dataclass_fields__)
    missing = [f for f in SUBSET_FIELDS if f not in fields]
    if missing or "compute_slot_mapping" not in vars(BlockTable):
        raise RuntimeError(f"vLLM's attention metadata moved ({missing or 'slot mapping'}); "
                           "the ESP worker needs review")


def cpu_layout(kv_cache: torch.Tensor, head_dim: int, layer=None) -> CpuPagedKV:
    """The CPU_ATTN layout of ``kv_cache [num_blocks, Hkv, block_size, 2 * D]``."""
    return CpuPagedKV(kv_cache.shape[1], head_dim, kv_cache.shape[2], kv_cache.dtype,
                      isa=getattr(layer, "isa", None))


class ESPCPUAttentionImpl(ESPAttentionMixin, CPUAttentionBackendImpl):
    esp_layout = staticmethod(cpu_layout)


class ESPCPUAttentionMetadataBuilder(ESPMetadataBuilderMixin, CPUAttentionMetadataBuilder):
    pass


class ESPCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return ESPCPUAttentionImpl

    @staticmethod
    def get_builder_cls():
        return ESPCPUAttentionMetadataBuilder


class ESPCPUModelRunner(ESPRunnerMixin, CPUModelRunner):
    esp_layout = staticmethod(cpu_layout)


class ESPWorkerMixin:
    """Mixed into a vLLM worker: registers the ESP attention backend in place of the stock
    one (``esp_backend``, an ``AttentionBackendEnum`` name) before the worker starts, then
    turns the stock runner (``esp_stock_runner``, checked) into the ESP one."""

    esp_backend: str
    esp_backend_qualname: str
    esp_stock_runner: type
    esp_runner: type
    esp_runner_name: str  # how the error names the runner ESP needs
    esp_internals: tuple[tuple[type, str], ...]  # checked on top of ``check_internals``'s

    def __init__(self, *args, **kwargs):
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

        check_internals(*self.esp_internals)
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        name, qualname = self.esp_backend_for(vllm_config)
        register_backend(AttentionBackendEnum[name], qualname)
        super().__init__(*args, **kwargs)

    def esp_backend_for(self, vllm_config) -> tuple[str, str]:
        """(the vLLM attention backend ESP overrides, the override's qualname)."""
        return self.esp_backend, self.esp_backend_qualname

    def init_device(self):
        super().init_device()
        if type(self.model_runner) is not self.esp_stock_runner:
            raise RuntimeError(f"ESP needs {self.esp_runner_name}, got "
                               f"{type(self.model_runner).__name__}")
        views.check_runner(self.model_runner)
        views.become(self, self.esp_runner)


class ESPCPUWorker(ESPWorkerMixin, CPUWorker):
    esp_backend = "CPU_ATTN"
    esp_backend_qualname = BACKEND_QUALNAME
    esp_stock_runner = CPUModelRunner
    esp_runner = ESPCPUModelRunner
    esp_runner_name = "vLLM's V1 CPU model runner"
    esp_internals = ((CPUAttentionBackendImpl, "forward"),
                     (CPUAttentionMetadataBuilder, "build"), (CPUWorker, "init_device"))
