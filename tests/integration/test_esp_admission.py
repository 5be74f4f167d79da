"""The global manager admits new requests (``--esp-admission manager``).

Two instances of 15 usable blocks (1920 tokens) each. Eight 300-token prompts that each
generate 400 tokens (700 tokens, 6 blocks, at the end) arrive together. vLLM's per-instance
schedulers admit all of them (their prompts fit), so the decodes outgrow the pool and vLLM
preempts (recompute). The manager's dispatching rules admit a request only while the KV every
live request holds at its end fits the pool: four run, the others wait for them, nothing is
preempted, and the outputs still equal stock vLLM's.
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.config import ESPConfig
from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    MiB,
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
    record_each_step,
)

POOL = 2 * MiB  # per instance: 15 usable blocks of 128 tokens
MAX_LEN = 1024
PROFILE = "measured_cpu_tiny-llama"  # built in: k = 1 only (admission and dispatch, no rings)


def _workload():
    rng = random.Random(11)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(300)])
               for _ in range(8)]
    params = [SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True, logprobs=1)
              if i % 2 else
              SamplingParams(temperature=0.8, seed=i, max_tokens=400, ignore_eos=True)
              for i in range(8)]
    return prompts, params


def _serve(model: str, admission: str) -> dict:
    with engine_core_in_process():
        llm = make_engine(model, 2, kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2, "profile": PROFILE,
                                                     "admission": admission}})
    try:
        sched = esp_scheduler(llm)
        # requests running over all instances, after every step
        running = record_each_step(sched, lambda: sched.get_request_counts()[0])
        out = llm.generate(*_workload(), use_tqdm=False)
        return {"out": out, "stats": sched.esp_stats(), "running": running}
    finally:
        close_engine(llm)


@pytest.fixture(scope="module")
def runs(tiny_models):
    model = tiny_models["llama"]
    return {"vllm": _serve(model, "vllm"), "manager": _serve(model, "manager"),
            "ref": generate_once(model, None, *_workload(), kv_cache_memory_bytes=64 * MiB,
                                 max_model_len=MAX_LEN)}


def test_instances_admitting_on_their_own_preempt(runs):
    stats = runs["vllm"]["stats"]
    assert sum(stats["preemptions"]) + stats["span_recompute"] > 0
    assert max(runs["vllm"]["running"]) == 8
    assert_same_outputs(runs["vllm"]["out"], runs["ref"])


def test_the_manager_admits_only_what_the_pool_can_finish(runs):
    stats = runs["manager"]["stats"]
    assert stats["preemptions"] == [0, 0] and stats["span_recompute"] == 0
    # 7 blocks each at worst (6 + one split over instances), 30 blocks: four at a time
    assert max(runs["manager"]["running"]) == 4
    assert stats["kv_used_blocks"] == [0, 0]
    assert_same_outputs(runs["manager"]["out"], runs["ref"])


def test_manager_admission_needs_a_profile():
    with pytest.raises(ValueError, match="needs a cost profile"):
        ESPConfig(instances=2, admission="manager")
    with pytest.raises(ValueError, match="--esp-admission must be one of"):
        ESPConfig(instances=2, profile=PROFILE, admission="greedy")
