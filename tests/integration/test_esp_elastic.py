"""ESP over 4 instances: pooled KV, scale-up, no replication, decode bytes, mixed concurrency.

One ESP engine with 4 instances of C = 15 usable blocks (1920 tokens) each, run in-process so
its scheduler can be inspected, and one stock engine with a single pool of 4·C as the
reference (stock with pool C cannot even start at this max_model_len; see
test_esp_pooled_kv.py). Tiny float32 Llama, weights x3.
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
    make_engine,
    record_kv_usage,
)

INSTANCES = 4
POOL = 2 * MiB  # per instance: 16 blocks of 128 tokens, 15 usable -> C = 1920 tokens
C = 15 * 128
BLOCK = 128
MAX_LEN = 7168
LONG = 6720  # 3.5 C
VOCAB = 512


def _tokens(n: int, seed: int) -> TokensPrompt:
    rng = random.Random(seed)
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, VOCAB) for _ in range(n)])


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=1, **kw)


def _mixed_workload():
    """36 concurrent requests: 1..3000-token prompts (several larger than one instance),
    greedy with logprobs and seeded sampling, two asking to be spread, one long decode."""
    rng = random.Random(11)
    lengths = [1, 5, 64, 127, 128, 129, 300, 511, 800, 1000, 1500, 1919, 1920, 2100, 2500,
               3000] + rng.sample(range(2, 1200), 14) + [2600, 400, 900, 1800, 2200, 700]
    prompts = [_tokens(n, 100 + i) for i, n in enumerate(lengths)]
    params = []
    for i, n in enumerate(lengths):
        if i % 5 == 3:
            params.append(SamplingParams(temperature=0.9, top_k=40, seed=300 + i,
                                         max_tokens=rng.choice([4, 12, 24]), ignore_eos=True))
        else:
            params.append(_greedy(rng.choice([1, 8, 16, 32])))
    params[-3] = SamplingParams(temperature=0.9, seed=77, max_tokens=300, ignore_eos=True)
    params[-2] = _greedy(16, extra_args={"esp_instances": 3})
    params[-1] = _greedy(8, extra_args={"esp_instances": 4})
    return prompts, params


def _bytes_case(n_prompt: int, new: int):
    # a prompt of its own per run: a repeated prompt would hit the prefix cache and take
    # another prefill path (fewer prefill bytes), hiding the decode bytes
    return [_tokens(n_prompt, 7 + new)], _greedy(new, extra_args={"esp_instances": 2})


@pytest.fixture(scope="module")
def runs(tiny_models):
    model = tiny_models["llama"]
    out: dict = {}
    with engine_core_in_process():
        llm = make_engine(model, INSTANCES, kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN)
    try:
        sched = esp_scheduler(llm)
        usage = record_kv_usage(sched)
        out["total"] = [sched.pool.total_blocks(i) for i in range(INSTANCES)]
        out["long"] = llm.generate([_tokens(LONG, 1)], _greedy(16), use_tqdm=False)
        out["long_usage"] = list(usage)
        out["long_stats"] = sched.esp_stats()
        # decode bytes: (prefill + 9 tokens) - (prefill + 1 token), for prompts 8x apart
        for n_prompt in (300, 2400):
            got = []
            for new in (1, 9):
                before = sched.stats.esp_bytes_sent[:]
                llm.generate(*_bytes_case(n_prompt, new), use_tqdm=False)
                got.append(sum(sched.stats.esp_bytes_sent) - sum(before))
            out[("decode_bytes", n_prompt)] = got[1] - got[0]
        out["plan_bytes"] = list(sched.stats.esp_bytes_sent)
        out["worker_bytes"] = llm.collective_rpc("esp_comm_bytes")
        prompts, params = _mixed_workload()
        out["mixed"] = llm.generate(prompts, params, use_tqdm=False)
        out["mixed_stats"] = sched.esp_stats()
        out["open_spans"] = dict(sched.spans.spans)
    finally:
        close_engine(llm)
    ref = make_engine(model, None, kv_cache_memory_bytes=8 * MiB, max_model_len=MAX_LEN)
    try:
        out["long_ref"] = ref.generate([_tokens(LONG, 1)], _greedy(16), use_tqdm=False)
        prompts, params = _mixed_workload()
        out["mixed_ref"] = ref.generate(prompts, params, use_tqdm=False)
    finally:
        close_engine(ref)
    return out


def test_prompt_of_3_5_pools_matches_stock_with_one_big_pool(runs):
    assert all(t * BLOCK == C for t in runs["total"])
    assert_same_outputs(runs["long"], runs["long_ref"])
    assert len(runs["long"][0].outputs[0].token_ids) == 16


def test_its_kv_is_spread_over_at_least_3_instances_without_replication(runs):
    usage = runs["long_usage"]
    need = -(-(LONG + 16) // BLOCK)
    # the last decode steps: the request's KV is held by >= 3 instances
    assert sum(1 for x in usage[-2] if x > 0) >= 3, usage[-4:]
    # a token's KV lives on exactly one instance: at most one partial block per instance
    peak = max(sum(u) for u in usage)
    assert need <= peak <= need + INSTANCES, (peak, need)
    assert runs["long_stats"]["kv_used_blocks"] == [0] * INSTANCES


def test_decode_bytes_per_step_do_not_depend_on_context_length(runs):
    short, long = runs[("decode_bytes", 300)], runs[("decode_bytes", 2400)]
    assert short > 0
    assert short == long


def test_plan_byte_count_equals_what_the_workers_sent(runs):
    sent = [b.get("span_query", 0) + b.get("span_partial", 0) + b.get("ring_shift", 0)
            for b in runs["worker_bytes"]]
    assert sent == runs["plan_bytes"]
    assert all(b.get("ring_shift", 0) > 0 for b in runs["worker_bytes"])


def test_36_concurrent_mixed_requests_match_stock(runs):
    assert_same_outputs(runs["mixed"], runs["mixed_ref"])


def test_pool_accounting_after_the_mixed_run(runs):
    stats = runs["mixed_stats"]
    assert stats["kv_used_blocks"] == [0] * INSTANCES
    assert runs["open_spans"] == {}
    assert stats["spanning_requests"] >= 5  # 2500/3000-token prompts, hints, scale-ups
    assert sum(stats["decode_instances"].values()) >= 36
    assert stats["prefill_instances"].get(4, 0) >= 1
    # both prefill modes ran: all chunks in one step when the holders had room, else in turn
    assert 1 <= stats["parallel_prefills"] < stats["spanning_requests"]


def test_long_prompt_prefilled_on_all_four_instances_at_once(runs):
    assert runs["long_stats"]["parallel_prefills"] == 1
    assert runs["long_stats"]["ring_prefills"] == 1  # as a striped ring over the 4
    assert runs["long_stats"]["prefill_instances"] == {4: 1}
