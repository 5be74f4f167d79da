"""ESP worker side on NVIDIA GPUs: vLLM's V1 GPU worker with the ESP runner and a
``FLASH_ATTN`` backend whose impl runs the span attention after the stock kernel.

The GPU twin of ``esp_worker`` (CPU): the runner logic is the same ``ESPRunnerMixin``, the
span attention the same ``span_attention`` code; what differs is the paged layout
(``FlashPagedKV``, vLLM 0.32's flash cache ``[num_blocks, Hkv, block_size, 2 * D]``), the
communicator backend (NCCL, chosen in ``ESPWorkerExtension``) and the sampler whose seeded
draws a scale-up replays (vLLM's PyTorch sampler, ``_advance_generator(..., "gpu")``).

The ESP executor installs ``ESPGPUWorker`` on CUDA platforms with more than one instance and
makes the engine fit it: the ``FLASH_ATTN`` backend, the V1 model runner, eager mode (the
span attention is host code between kernels; CUDA graphs would capture a fixed plan) and
vLLM's PyTorch sampler. This path is written for GPU users and has not run on a GPU here
(the project's machines have none); what it shares with the CPU path is tested there, and
its layout against vLLM's definition in ``tests/ops``.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend, FlashAttentionImpl
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from vllm_esp.integration.esp_worker import ESPAttentionMixin, ESPRunnerMixin, ESPWorkerMixin
from vllm_esp.ops.kv_cache import FlashPagedKV

GPU_BACKEND_QUALNAME = "vllm_esp.integration.esp_gpu_worker.ESPFlashAttentionBackend"
# what the executor sets in the GPU instances' environment (see the module docstring)
GPU_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}


def flash_layout(kv_cache: torch.Tensor, head_dim: int, layer=None) -> FlashPagedKV:
    """The FLASH_ATTN layout of ``kv_cache [num_blocks, Hkv, block_size, 2 * D]``."""
    return FlashPagedKV(kv_cache.shape[1], head_dim, kv_cache.shape[2], kv_cache.dtype,
                        kv_cache.device)


class ESPFlashAttentionImpl(ESPAttentionMixin, FlashAttentionImpl):
    """Stock FlashAttention (the layer wrote this step's K/V in ``do_kv_cache_update``),
    then ``esp_attention``."""

    esp_layout = staticmethod(flash_layout)


class ESPFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return ESPFlashAttentionImpl


class ESPGPUModelRunner(ESPRunnerMixin, GPUModelRunner):
    esp_layout = staticmethod(flash_layout)
    esp_sampler = "gpu"


class ESPGPUWorker(ESPWorkerMixin, Worker):
    esp_backend = "FLASH_ATTN"
    esp_backend_qualname = GPU_BACKEND_QUALNAME
    esp_stock_runner = GPUModelRunner
    esp_runner = ESPGPUModelRunner
    esp_runner_name = "vLLM's V1 GPU model runner (VLLM_USE_V2_MODEL_RUNNER=0)"
    esp_internals = ((FlashAttentionImpl, "forward"), (Worker, "init_device"))
