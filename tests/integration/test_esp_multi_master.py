"""Multi-master decode: spanning requests that share instances are decoded by several masters.

Four 700-token prompts, each spread over both of 2 instances by the hint, arrive together:
they share one ring prefill and so the same holders and the same master. With
``decode_minibatch`` 2, that master decodes twice too many requests: when their next token
needs a new block, two of them continue on the other holder of their KV (nothing is copied;
their new tokens' KV lands there). Outputs equal stock vLLM's.
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    MiB,
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
    record_placements,
)

POOL = 4 * MiB  # per instance: 31 blocks of 128 tokens
MAX_LEN = 2048
SPREAD = {"esp_instances": 2}


def _workload():
    rng = random.Random(5)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(700)])
               for _ in range(4)]
    params = [SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True, logprobs=2,
                             extra_args=SPREAD),
              SamplingParams(temperature=0.9, seed=3, max_tokens=200, ignore_eos=True,
                             extra_args=SPREAD),
              SamplingParams(temperature=0.0, max_tokens=180, ignore_eos=True,
                             extra_args=SPREAD),
              SamplingParams(temperature=0.7, seed=9, max_tokens=190, ignore_eos=True,
                             logprobs=1, extra_args=SPREAD)]
    return prompts, params


@pytest.fixture(scope="module")
def run(tiny_models):
    prompts, params = _workload()
    out = {}
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2, "decode_minibatch": 2}})
    try:
        sched = esp_scheduler(llm)
        out["masters"] = record_placements(sched)
        out["esp"] = llm.generate(prompts, params, use_tqdm=False)
        out["stats"] = sched.esp_stats()
    finally:
        close_engine(llm)
    out["ref"] = generate_once(tiny_models["llama"], None, prompts, params,
                               kv_cache_memory_bytes=2 * POOL, max_model_len=MAX_LEN)
    return out


def test_an_overloaded_master_hands_decodes_to_the_other_holder(run):
    stats = run["stats"]
    assert stats["batched_ring_prefills"] == 4  # one ring: one master for all four
    # 4 decodes on one master, mini-batch 2: two move, then both masters have two
    assert stats["master_moves"] == 2
    assert stats["scale_up"] == 0 and stats["preemptions"] == [0, 0]
    final = sorted(m[-1] for m in run["masters"].values())
    assert final == [0, 0, 1, 1], run["masters"]
    moved = [m for m in run["masters"].values() if len(m) > 1]
    assert len(moved) == 2 and all(m[0] != m[1] for m in moved)
    assert stats["kv_used_blocks"] == [0, 0]


def test_outputs_match_stock(run):
    assert_same_outputs(run["esp"], run["ref"])
