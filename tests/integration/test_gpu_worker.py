"""The GPU twin of the ESP worker (``esp_gpu_worker``), checked without a GPU: it is built
from vLLM's V1 GPU classes of this vLLM, shares the CPU path's runner logic, the executor
fits a GPU instance to it, and a scale-up's generator replay matches vLLM's GPU sampler
(run here on CPU tensors). Its attention is the CPU engine's ESP stack (``ops``) with the
kernels ``ops.dispatch`` picks on CUDA (tested under the Triton interpreter and with a
flash-attn stand-in in ``tests/ops``), on vLLM's FLASH_ATTN cache layout."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch

from vllm_esp.integration import esp_gpu_worker as gw
from vllm_esp.integration.esp_runner import ESPRunnerMixin, _advance_generator
from vllm_esp.integration.esp_worker import ESPCPUModelRunner


def test_gpu_worker_extends_vllms_v1_gpu_classes():
    from vllm.v1.attention.backends.flash_attn import FlashAttentionImpl
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    assert issubclass(gw.ESPGPUWorker, Worker)
    assert issubclass(gw.ESPGPUModelRunner, ESPRunnerMixin)
    assert issubclass(gw.ESPGPUModelRunner, GPUModelRunner)
    assert gw.ESPFlashAttentionBackend.get_impl_cls() is gw.ESPFlashAttentionImpl
    assert gw.ESPFlashAttentionBackend.get_builder_cls() is gw.ESPFlashAttentionMetadataBuilder
    assert issubclass(gw.ESPFlashAttentionImpl, FlashAttentionImpl)
    # the override takes exactly what vLLM's attention layer passes to the stock impl
    assert list(inspect.signature(gw.ESPFlashAttentionImpl.forward).parameters) == \
        list(inspect.signature(FlashAttentionImpl.forward).parameters)
    # the same runner logic as the CPU engine (which the engine tests run)
    for name in ("execute_model", "_update_states", "_prepare_inputs", "_load_stripes",
                 "_serve_without_forward"):
        assert getattr(gw.ESPGPUModelRunner, name) is getattr(ESPCPUModelRunner, name)
    assert gw.ESPGPUModelRunner.esp_sampler == "gpu"
    # the same worker logic too (backend registration, runner swap), with GPU settings
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_esp.integration.esp_worker import ESPCPUWorker

    assert gw.ESPGPUWorker.init_device is ESPCPUWorker.init_device
    assert gw.ESPGPUWorker.__init__ is ESPCPUWorker.__init__
    assert AttentionBackendEnum[gw.ESPGPUWorker.esp_backend] is AttentionBackendEnum.FLASH_ATTN
    assert gw.ESPGPUWorker.esp_stock_runner is GPUModelRunner
    assert gw.ESPGPUWorker.esp_runner is gw.ESPGPUModelRunner


def test_flash_layout_follows_the_cache_tensor():
    cache = torch.zeros(5, 2, 16, 2 * 64, dtype=torch.bfloat16)
    layout = gw.flash_layout(cache, 64)
    assert (layout.num_kv_heads, layout.head_dim, layout.block_size) == (2, 64, 16)
    assert layout.dtype == torch.bfloat16 and layout.device == cache.device


def test_executor_fits_a_gpu_instance_to_the_esp_worker():
    from vllm.config.compilation import CUDAGraphMode
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from vllm_esp.integration.executor import ESP_GPU_WORKER
    from vllm_esp.integration.instance_config import fit_gpu_instance as _fit_gpu_instance

    config = SimpleNamespace(parallel_config=SimpleNamespace(worker_cls="auto"),
                             attention_config=SimpleNamespace(backend=None),
                             model_config=SimpleNamespace(enforce_eager=False,
                                                          dtype=torch.bfloat16),
                             compilation_config=SimpleNamespace(cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE))
    env = _fit_gpu_instance(config)
    assert config.parallel_config.worker_cls == ESP_GPU_WORKER
    assert config.attention_config.backend == AttentionBackendEnum.FLASH_ATTN
    # compile and CUDA graphs stay as configured: steps with span traffic go eager per step
    assert not config.model_config.enforce_eager
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.FULL_AND_PIECEWISE
    assert env == {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}
    config.model_config.dtype = torch.float32  # flash-attn has no fp32: vLLM's Triton backend
    _fit_gpu_instance(config)
    assert config.attention_config.backend == AttentionBackendEnum.TRITON_ATTN
    assert gw.ESPTritonAttentionBackend.get_impl_cls() is gw.ESPTritonAttentionImpl


def test_instances_get_their_own_gpus_or_share_with_a_memory_split():
    from vllm_esp.integration.instance_config import place_gpu_instance as _place_gpu_instance
    from vllm_esp.integration.gpu_placement import place_instances

    own = place_instances(2, 2, ["0", "1", "2", "3"])
    assert [p.env for p in own] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                    {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert all(p.sharing == 1 for p in own)
    shared = place_instances(3, 1, ["5", "7"])  # 3 instances, 2 GPUs: round-robin
    assert [p.devices for p in shared] == [("5",), ("7",), ("5",)]
    assert [p.sharing for p in shared] == [2, 1, 2]
    config = SimpleNamespace(cache_config=SimpleNamespace(gpu_memory_utilization=0.9))
    assert _place_gpu_instance(config, shared[0]) == {"CUDA_VISIBLE_DEVICES": "5"}
    assert config.cache_config.gpu_memory_utilization == 0.45
    import pytest

    with pytest.raises(ValueError, match="needs 4 GPUs"):
        place_instances(2, 4, ["0", "1"])


def test_a_step_with_span_traffic_runs_without_a_cuda_graph(monkeypatch):
    from vllm_esp.integration import esp_step

    seen = []

    class _Base:
        def _determine_batch_execution_and_padding(self, *args, **kwargs):
            seen.append(kwargs.get("force_eager", False))

    class _Runner(ESPRunnerMixin, _Base):
        pass

    _Runner()._determine_batch_execution_and_padding(8, 2)
    monkeypatch.setattr(esp_step, "current", lambda: object())
    _Runner()._determine_batch_execution_and_padding(8, 2)
    assert seen == [False, True]


def test_scale_up_generator_replay_matches_vllms_gpu_sampler():
    """A seeded request continued on a new master: its generator must be where vLLM's
    PyTorch sampler (``random_sample``) leaves it after the steps already sampled."""
    from vllm.v1.sample.ops.topk_topp_sampler import random_sample

    vocab, steps = 97, 5
    for fp64 in (False, True):
        sampled, replayed = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        probs = torch.softmax(torch.randn(1, vocab), dim=-1)
        for _ in range(steps):
            random_sample(probs, {0: sampled}, use_fp64_gumbel=fp64)
        _advance_generator(SimpleNamespace(generator=replayed), steps, vocab, fp64, "gpu")
        assert torch.equal(random_sample(probs, {0: sampled}, use_fp64_gumbel=fp64),
                           random_sample(probs, {0: replayed}, use_fp64_gumbel=fp64))
        assert torch.equal(sampled.get_state(), replayed.get_state())
