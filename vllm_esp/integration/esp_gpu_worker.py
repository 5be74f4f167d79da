"""ESP worker side on NVIDIA GPUs: vLLM's V1 GPU worker with the ESP runner and a
``FLASH_ATTN`` backend whose impl computes the rows of spread requests with the ESP stack.

The GPU twin of ``esp_worker`` (CPU): the runner logic is the same ``ESPRunnerMixin``, the
backend logic the same ``ESPAttentionMixin`` / ``ESPMetadataBuilderMixin``; what differs is
the paged layout (``FlashPagedKV``, vLLM 0.32's flash cache ``[num_blocks, Hkv, block_size,
2 * D]``), the kernels ``ops.dispatch`` picks for it (flash-attn varlen reading the cache in
place, Triton where flash-attn cannot express the mask), the communicator backend (NCCL) and
the sampler whose seeded draws a scale-up replays (``_advance_generator(..., "gpu")``).

Written for GPU users; these machines have no GPU, so what it shares with the CPU path is
tested there, its kernels under the Triton interpreter and a flash-attn stand-in, and
``benchmarks/gpu_check.py`` runs it on a real GPU when one is lent.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker

from vllm_esp.integration.esp_attention import ESPAttentionMixin, ESPMetadataBuilderMixin
from vllm_esp.integration.esp_runner import ESPRunnerMixin
from vllm_esp.integration.esp_worker import ESPWorkerMixin
from vllm_esp import qualnames
from vllm_esp.ops.kv_cache import FlashPagedKV

GPU_BACKEND_QUALNAME = qualnames.GPU_ATTENTION_BACKEND
# float32 models: flash-attn computes in half precision only; vLLM's Triton backend has the
# same cache layout and takes float32
GPU_FP32_BACKEND_QUALNAME = qualnames.GPU_FP32_ATTENTION_BACKEND
# what the executor sets in the GPU instances' environment and the engine's (one runner mode
# in every process: see ESPExecutor)
GPU_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}


def flash_layout(kv_cache: torch.Tensor, head_dim: int, layer=None) -> FlashPagedKV:
    """The FLASH_ATTN layout of ``kv_cache [num_blocks, Hkv, block_size, 2 * D]``."""
    return FlashPagedKV(kv_cache.shape[1], head_dim, kv_cache.shape[2], kv_cache.dtype,
                        kv_cache.device)


class ESPFlashAttentionImpl(ESPAttentionMixin, FlashAttentionImpl):
    esp_layout = staticmethod(flash_layout)


class ESPFlashAttentionMetadataBuilder(ESPMetadataBuilderMixin, FlashAttentionMetadataBuilder):
    pass


class ESPFlashAttentionBackend(FlashAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return ESPFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return ESPFlashAttentionMetadataBuilder


class ESPTritonAttentionImpl(ESPAttentionMixin, TritonAttentionImpl):
    esp_layout = staticmethod(flash_layout)


class ESPTritonAttentionMetadataBuilder(ESPMetadataBuilderMixin, TritonAttentionMetadataBuilder):
    pass


class ESPTritonAttentionBackend(TritonAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return ESPTritonAttentionImpl

    @staticmethod
    def get_builder_cls():
        return ESPTritonAttentionMetadataBuilder


def attention_backend_for(dtype) -> tuple[str, str]:
    """(vLLM backend name, ESP override qualname) for a model dtype."""
    if dtype == torch.float32:
        return "TRITON_ATTN", GPU_FP32_BACKEND_QUALNAME
    return "FLASH_ATTN", GPU_BACKEND_QUALNAME


class ESPGPUModelRunner(ESPRunnerMixin, GPUModelRunner):
    esp_layout = staticmethod(flash_layout)
    esp_sampler = "gpu"


class ESPGPUWorker(ESPWorkerMixin, Worker):
    esp_backend = "FLASH_ATTN"
    esp_backend_qualname = GPU_BACKEND_QUALNAME
    esp_stock_runner = GPUModelRunner
    esp_runner = ESPGPUModelRunner
    esp_runner_name = "vLLM's V1 GPU model runner (VLLM_USE_V2_MODEL_RUNNER=0)"
    esp_internals = ((FlashAttentionImpl, "forward"), (TritonAttentionImpl, "forward"),
                     (FlashAttentionMetadataBuilder, "build"),
                     (TritonAttentionMetadataBuilder, "build"), (Worker, "init_device"))

    def esp_backend_for(self, vllm_config) -> tuple[str, str]:
        return attention_backend_for(vllm_config.model_config.dtype)
