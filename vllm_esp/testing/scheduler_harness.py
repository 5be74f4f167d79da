"""Drive a real vLLM scheduler (stock or ``AliseScheduler``) without a model or an engine.

The scheduler is vLLM's own class with its KV-cache manager and request state machine; only the
model is replaced: every scheduled request whose prompt is computed gets one token per step
(``fake_step``). Tests use it to time what an engine step spends in the scheduler
(``schedule`` + ``update_from_output``: arrivals, predictions, finishing and learning), in a
fraction of a second per hundred steps and without starting worker processes.
"""

from __future__ import annotations

import time


def make_scheduler(model: str, esp: dict | None = None, *, cls: str = "alise",
                   max_num_seqs: int = 4, num_blocks: int = 256, block_size: int = 16,
                   max_model_len: int = 1024):
    """An ``AliseScheduler`` (``cls="alise"``, with ``additional_config={"esp": esp}``) or the
    stock ``Scheduler`` for ``model`` (a local checkpoint; only its config and tokenizer are
    read). The KV cache is ``num_blocks`` blocks of one layer shaped like the tiny test model."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    model_config = ModelConfig(model=model, dtype="float32", max_model_len=max_model_len, seed=0)
    sched_config = SchedulerConfig(max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                   max_num_batched_tokens=max(max_model_len, 512),
                                   is_encoder_decoder=False)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=False)
    cache_config.num_gpu_blocks = num_blocks
    vllm_config = VllmConfig(model_config=model_config, cache_config=cache_config,
                             scheduler_config=sched_config,
                             additional_config={"esp": dict(esp or {})})
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=32,
                             dtype=torch.float32)
    kv_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                              kv_cache_groups=[KVCacheGroupSpec(["layer0"], spec)])
    if cls == "alise":
        from vllm_esp.scheduling.scheduler import AliseScheduler as cls_
    else:
        cls_ = Scheduler
    return cls_(vllm_config=vllm_config, kv_cache_config=kv_config, log_stats=False,
                structured_output_manager=StructuredOutputManager(vllm_config),
                block_size=block_size)


def make_request(request_id: str, prompt_token_ids: list[int], max_tokens: int,
                 extra_args: dict | None = None):
    """A vLLM ``Request`` that generates exactly ``max_tokens`` tokens (``ignore_eos``)."""
    from vllm import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra_args)
    return Request(request_id, list(prompt_token_ids), params, None, arrival_time=time.time())


def fake_step(sched, arrivals=(), token: int = 7) -> tuple[float, list[str]]:
    """One engine step with the model replaced: add the ``arrivals`` (vLLM's engine loop adds
    new requests between steps), schedule, and return a token for every scheduled request whose
    prompt is computed (one still prefilling gets nothing, as vLLM's runner discards it).
    Returns (seconds spent in the scheduler, ids of the requests that finished)."""
    from vllm.v1.outputs import ModelRunnerOutput

    t0 = time.perf_counter()
    for request in arrivals:
        sched.add_request(request)
    out = sched.schedule()
    req_ids = list(out.num_scheduled_tokens)
    sampled = [[token] if sched.requests[r].num_computed_tokens >= sched.requests[r].num_tokens
               else [] for r in req_ids]
    runner = ModelRunnerOutput(req_ids=req_ids,
                               req_id_to_index={r: i for i, r in enumerate(req_ids)},
                               sampled_token_ids=sampled)
    engine_out = sched.update_from_output(out, runner)
    seconds = time.perf_counter() - t0
    finished = [o.request_id for outs in engine_out.values() for o in outs.outputs
                if o.finish_reason is not None]
    return seconds, finished
