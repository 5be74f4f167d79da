"""Elastic prefill: the global manager gives a request several instances for its prefill only.

Two instances with pools of C = 1920 tokens and a cost profile in which two instances prefill
a long prompt faster than one (and a short one slower). A long prompt that fits one pool is
prefilled as a striped ring over both instances and its KV is kept on one of them
(LoongServe's proactive migration): the other instance is free again after that one step and
the decode sends no span attention bytes. Short prompts stay on one instance. Outputs equal
stock vLLM's with prefix caching on (vLLM's default).
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.planner.cost_model import Linear3
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

from tests.planner.helpers import cost_model

POOL = 2 * MiB  # per instance: 15 usable blocks of 128 tokens
MAX_LEN = 3072


def _profile(path) -> str:
    """Two instances: 5 ms more fixed cost, half the per-token cost (wins above ~480
    tokens)."""
    cost = cost_model({1: Linear3(0.001, 2e-5, 1e-9), 2: Linear3(0.006, 1e-5, 0.5e-9)},
                      decode={1: Linear3(0.001, 1e-5, 1e-8)})
    cost.save(path)
    return str(path)


def _tokens(n: int, seed: int) -> TokensPrompt:
    rng = random.Random(seed)
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=1)


def _workload():
    """(prompts, params) of the mixed batch: long and short, greedy and seeded, one hint."""
    prompts = [_tokens(1400, 3), _tokens(60, 4), _tokens(1700, 5), _tokens(200, 6),
               _tokens(300, 7), _tokens(30, 8)]
    params = [_greedy(20), _greedy(12),
              SamplingParams(temperature=0.8, seed=11, max_tokens=16, ignore_eos=True),
              _greedy(8),
              SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True,
                             extra_args={"esp_prefill_instances": 2}),
              SamplingParams(temperature=0.9, seed=2, max_tokens=10, ignore_eos=True)]
    return prompts, params


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    profile = _profile(tmp_path_factory.mktemp("profile") / "k2_wins.json")
    long_prompt = _tokens(1500, 1)
    out = {}
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN, enable_prefix_caching=True,
                          additional_config={"esp": {"instances": 2, "profile": profile}})
    try:
        sched = esp_scheduler(llm)
        # used blocks per instance once every instance's step is in (on their own clocks
        # one instance's output can arrive while its ring partner is still computing)
        usage = record_each_step(sched, lambda: None if sched.in_flight else
                                 [u.used_blocks for u in sched.pool.usages()])
        before = sum(sched.stats.esp_bytes_sent)
        out["one_token"] = llm.generate([long_prompt], _greedy(1), use_tqdm=False)
        out["prefill_bytes"] = sum(sched.stats.esp_bytes_sent) - before
        out["after_prefill"] = sched.esp_stats()
        usage.clear()
        before = sum(sched.stats.esp_bytes_sent)
        out["long"] = llm.generate([long_prompt], _greedy(40), use_tqdm=False)
        out["long_bytes"] = sum(sched.stats.esp_bytes_sent) - before
        out["long_usage"] = [u for u in usage if u is not None]
        out["long_stats"] = sched.esp_stats()
        out["short"] = llm.generate([_tokens(80, 2)], _greedy(8), use_tqdm=False)
        out["short_stats"] = sched.esp_stats()
        prompts, params = _workload()
        out["mixed"] = llm.generate(prompts, params, use_tqdm=False)
        out["stats"] = sched.esp_stats()
        out["open_spans"] = dict(sched.spans.spans)
    finally:
        close_engine(llm)
    prompts, params = _workload()
    ref = make_engine(tiny_models["llama"], None, kv_cache_memory_bytes=2 * POOL,
                      max_model_len=MAX_LEN, enable_prefix_caching=True)
    try:
        out["ref_one_token"] = ref.generate([long_prompt], _greedy(1), use_tqdm=False)
        out["ref_long"] = ref.generate([long_prompt], _greedy(40), use_tqdm=False)
        out["ref_short"] = ref.generate([_tokens(80, 2)], _greedy(8), use_tqdm=False)
        out["ref_mixed"] = ref.generate(prompts, params, use_tqdm=False)
    finally:
        close_engine(ref)
    return out


def test_long_prompt_is_prefilled_by_a_ring_over_both_instances(run):
    stats = run["after_prefill"]
    assert stats["planned_prefill_instances"] == {2: 1}
    assert stats["ring_prefills"] == 1 and stats["prefill_instances"] == {2: 1}
    assert stats["spanning_requests"] == 0  # its KV was not spread
    assert run["prefill_bytes"] > 0
    assert_same_outputs(run["one_token"], run["ref_one_token"])


def test_its_kv_stays_on_one_instance_and_the_decode_sends_nothing(run):
    # (the 1-token run finished in its prefill step; this one decodes after it)
    assert run["long_stats"]["scale_down"] == 1  # the helper left after the prefill step
    assert run["long_stats"]["spanning_requests"] == 0
    assert run["long_bytes"] == run["prefill_bytes"]  # 40 tokens cost what 1 token did
    # used blocks per instance after each step (the helper's are freed in the prefill step)
    held = [u for u in run["long_usage"] if sum(u)]
    assert len(held) >= 39 and all(sum(1 for x in u if x) == 1 for u in held), held
    assert max(sum(u) for u in held) == -(-(1500 + 39) // 128)  # no replication
    assert_same_outputs(run["long"], run["ref_long"])


def test_short_prompt_stays_on_one_instance(run):
    assert run["short_stats"]["planned_prefill_instances"].get(1, 0) >= 1
    assert run["short_stats"]["ring_prefills"] == 2  # only the two long runs
    assert_same_outputs(run["short"], run["ref_short"])


def test_mixed_batch_with_a_hint_matches_stock(run):
    assert_same_outputs(run["mixed"], run["ref_mixed"])
    stats = run["stats"]
    assert stats["ring_prefills"] >= 3  # at least the hinted 300-token prompt
    assert stats["kv_used_blocks"] == [0, 0] and run["open_spans"] == {}
    assert stats["preemptions"] == [0, 0]


def test_a_profile_that_does_not_exist_fails_at_start(tiny_models):
    with pytest.raises(Exception, match="neither a file nor a built-in profile"):
        with engine_core_in_process():
            generate_once(tiny_models["llama"], 2, [_tokens(10, 0)], _greedy(1),
                          kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2,
                                                     "profile": "/nonexistent.json"}})
