"""Pooled KV: a request larger than one instance's KV pool, served over two instances.

ESP with 2 instances of C = 15 usable blocks (1920 tokens) each serves a 2880-token prompt
(1.5 C) + 16 greedy tokens with stock vLLM's tokens (stock with one pool of 31 blocks is the
reference; stock with pool C refuses to start at that max_model_len). The request's KV is held
by both instances (contiguous chunks, no replication) and the chunks' holders exchange
per-layer partial attention over the ESP communicator.
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
    record_kv_usage,
)

POOL = 2 * MiB  # per instance: 16 blocks of 128 tokens (1 KiB per token), 15 usable
MAX_LEN = 3072  # > one pool, <= the sum of two
PROMPT = 2880
NEW = 16
BLOCK = 128


def _prompt():
    rng = random.Random(5)
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(PROMPT)])


def _params():
    return SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True, logprobs=1)


def _long_decode_prompt():
    return TokensPrompt(prompt_token_ids=[7 + i % 300 for i in range(500)])


def _long_decode_params():  # 500 + 2000 tokens: more than one instance's 1920
    return SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)


def _merge_pair():
    """A 500 + 1600-token decode outgrows its instance (1920 tokens) at step ~1420, while a
    10 + 1500-token decode still runs on the other instance with 3 blocks to spare."""
    prompts = [_long_decode_prompt(), TokensPrompt(prompt_token_ids=[11 + i for i in range(10)])]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (1600, 1500)]
    return prompts, params


def _ring_batch():
    """Two prompts that fit one instance, each asked to be spread over both instances: they
    arrive together, so the second joins the first one's ring prefill."""
    rng = random.Random(9)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])
               for n in (700, 1000)]
    params = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=1,
                             extra_args={"esp_instances": 2}),
              SamplingParams(temperature=0.8, seed=3, max_tokens=8, ignore_eos=True,
                             logprobs=1, extra_args={"esp_instances": 2})]
    return prompts, params


@pytest.fixture(scope="module")
def pooled_run(tiny_models):
    # lockstep (esp.lockstep): the merge scenario needs the other instance still decoding
    # when the long decode outgrows its pool; on their own clocks the short decode's
    # instance runs ahead and is idle by then (a plain scale-up, as test_esp_elastic shows)
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2, "lockstep": True}})
    try:
        sched = esp_scheduler(llm)
        usage = record_kv_usage(sched)
        outs = llm.generate([_prompt()], _params(), use_tqdm=False)
        run = {"outs": outs, "usage": list(usage), "stats": sched.esp_stats(),
               "total": [sched.pool.total_blocks(i) for i in range(2)],
               "spanning": sched.stats.spanning_requests, "open_spans": dict(sched.spans.spans),
               "bytes": llm.collective_rpc("esp_comm_bytes"),
               "calls": llm.collective_rpc("esp_comm_calls")}
        # two spanning requests that fit together are prefilled in one batched ring
        run["batch"] = llm.generate(*_ring_batch(), use_tqdm=False)
        run["batch_stats"] = sched.esp_stats()
        run["batch_calls"] = llm.collective_rpc("esp_comm_calls")
        # two spanning requests at once do not fit together: the second waits for the first
        run["pair"] = llm.generate([_prompt(), _prompt()], _params(), use_tqdm=False)
        # decode tokens beyond one pool: the decode scales up onto the other instance
        run["grown"] = llm.generate([_long_decode_prompt()], _long_decode_params(),
                                    use_tqdm=False)
        run["grown_stats"] = sched.esp_stats()
        # the same, but the other instance is busy decoding: the decode joins its batch
        run["merged"] = llm.generate(*_merge_pair(), use_tqdm=False)
        run["merged_stats"] = sched.esp_stats()
        # more than max_model_len: refused at the front end, naming the limit
        try:
            llm.generate([TokensPrompt(prompt_token_ids=[7] * (MAX_LEN + 1))],
                         SamplingParams(max_tokens=4), use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - vLLM's VLLMValidationError, as stock raises
            run["too_long"] = str(e)
        run["after"] = llm.generate([_prompt()], _params(), use_tqdm=False)
        run["final_stats"] = sched.esp_stats()
    finally:
        close_engine(llm)
    ref = make_engine(tiny_models["llama"], None, kv_cache_memory_bytes=2 * POOL,
                      max_model_len=MAX_LEN)
    try:
        run["ref"] = ref.generate([_prompt()], _params(), use_tqdm=False)
        run["grown_ref"] = ref.generate([_long_decode_prompt()], _long_decode_params(),
                                        use_tqdm=False)
        run["merged_ref"] = ref.generate(*_merge_pair(), use_tqdm=False)
        run["batch_ref"] = ref.generate(*_ring_batch(), use_tqdm=False)
    finally:
        close_engine(ref)
    return run


def test_prompt_is_larger_than_one_instance_pool(pooled_run):
    assert all(t * BLOCK < PROMPT for t in pooled_run["total"])
    assert PROMPT + NEW <= sum(pooled_run["total"]) * BLOCK
    assert pooled_run["spanning"] == 1


def test_greedy_tokens_match_stock_with_one_big_pool(pooled_run):
    assert_same_outputs(pooled_run["outs"], pooled_run["ref"])
    assert len(pooled_run["outs"][0].outputs[0].token_ids) == NEW


def test_kv_spread_over_both_instances_without_replication(pooled_run):
    usage = pooled_run["usage"]
    both = [u for u in usage if all(x > 0 for x in u)]
    assert both, f"no step with the request's KV on both instances: {usage}"
    need = -(-(PROMPT + NEW) // BLOCK)
    # a token's KV lives on exactly one instance: one partial block per instance at most
    assert need <= max(sum(u) for u in usage) <= need + 1
    # the last decode step still had both instances holding the request
    assert all(x > 0 for x in usage[-2])


def test_prefill_ran_on_both_instances_in_one_step(pooled_run):
    # an idle engine has room: both chunks are prefilled in the same step (sequence parallel),
    # as a striped ring
    assert pooled_run["stats"]["parallel_prefills"] == 1
    assert pooled_run["stats"]["ring_prefills"] == 1
    assert pooled_run["stats"]["prefill_instances"] == {2: 1}


def test_two_spanning_prompts_share_one_ring_prefill(pooled_run):
    # the second request joined the first one's parallel prefill: both as rings, in one
    # batch (one message per hop carries both shards), and each matches stock
    assert_same_outputs(pooled_run["batch"], pooled_run["batch_ref"])
    before, after = pooled_run["stats"], pooled_run["batch_stats"]
    assert after["parallel_prefills"] - before["parallel_prefills"] == 2
    assert after["ring_prefills"] - before["ring_prefills"] == 2
    assert after["batched_ring_prefills"] - before["batched_ring_prefills"] == 2
    # as many ring hops (one per layer with 2 instances) as the single request's prefill
    single = [c["ring_shift"] for c in pooled_run["calls"]]
    batched = [a["ring_shift"] - b["ring_shift"]
               for a, b in zip(pooled_run["batch_calls"], pooled_run["calls"])]
    assert batched == single and all(n > 0 for n in single)


def test_pools_all_free_and_spans_released_after_the_run(pooled_run):
    assert pooled_run["stats"]["kv_used_blocks"] == [0, 0]
    assert pooled_run["open_spans"] == {}


def test_holders_passed_kv_around_the_ring_then_exchanged_decode_attention(pooled_run):
    sent = pooled_run["bytes"]  # one dict per worker (instance order)
    assert all(b.get("ring_shift", 0) > 0 for b in sent)  # prefill: both sent their stripes
    # decode: the master asks the other holder for partial attention over its chunk
    assert sum(b.get("span_query", 0) for b in sent) > 0
    assert sum(b.get("span_partial", 0) for b in sent) > 0


def test_stock_with_one_pool_of_that_size_refuses(pooled_run, tiny_models):
    # in-process after the ESP engine: the pooled-capacity check must not leak into stock
    with engine_core_in_process(), pytest.raises(ValueError, match="max seq len"):
        llm = make_engine(tiny_models["llama"], None, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN)
        close_engine(llm)


def test_spanning_requests_wait_for_room(pooled_run):
    ref = list(pooled_run["ref"][0].outputs[0].token_ids)
    assert [list(o.outputs[0].token_ids) for o in pooled_run["pair"]] == [ref, ref]
    assert list(pooled_run["after"][0].outputs[0].token_ids) == ref  # engine still serves
    assert pooled_run["final_stats"]["kv_used_blocks"] == [0, 0]


def test_decode_outgrowing_its_instance_scales_up_without_preemption(pooled_run):
    got = pooled_run["grown"][0].outputs[0]
    ref = pooled_run["grown_ref"][0].outputs[0]
    assert len(got.token_ids) == 2000
    assert list(got.token_ids) == list(ref.token_ids)
    stats = pooled_run["grown_stats"]
    assert stats["scale_up"] >= 1
    assert stats["preemptions"] == [0, 0]
    assert stats["decode_instances"].get(2, 0) >= 1


def test_scale_up_prefers_an_idle_instance_and_merges_into_a_busy_one(pooled_run):
    # alone, the decode scaled up onto the idle instance: no merge
    assert pooled_run["grown_stats"]["merge"] == 0
    # next to another decode, the only instance with room was busy: the decode joined its
    # batch (LoongServe's merge); no KV moved, nothing was preempted, tokens equal stock
    assert_same_outputs(pooled_run["merged"], pooled_run["merged_ref"])
    before, after = pooled_run["grown_stats"], pooled_run["merged_stats"]
    assert after["scale_up"] - before["scale_up"] == 1
    assert after["merge"] - before["merge"] == 1
    assert after["preemptions"] == [0, 0]
    assert after["kv_used_blocks"] == [0, 0]


def test_request_longer_than_the_pooled_limit_is_refused_by_name(pooled_run):
    assert str(MAX_LEN) in pooled_run["too_long"]


@pytest.fixture(scope="module")
def qwen_run(tiny_models):
    """Qwen2-shaped model (QKV bias), prefix caching on (vLLM's default): a spanning prompt,
    a decode that scales up, and the spanning prompt again (its first chunk is a cache hit)."""
    prompts = [_prompt(), TokensPrompt(prompt_token_ids=[9 + i % 400 for i in range(1800)]),
               _prompt()]
    params = [_params(), SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True,
                                        logprobs=1), _params()]
    run = {}
    with engine_core_in_process():
        llm = make_engine(tiny_models["qwen2"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN, enable_prefix_caching=True)
    try:
        run["outs"] = [llm.generate([p], sp, use_tqdm=False)[0] for p, sp in zip(prompts, params)]
        run["stats"] = esp_scheduler(llm).esp_stats()
    finally:
        close_engine(llm)
    run["ref"] = generate_once(tiny_models["qwen2"], None, prompts, params,
                               kv_cache_memory_bytes=2 * POOL, max_model_len=MAX_LEN,
                               enable_prefix_caching=True)
    return run


def test_qwen2_spanning_prefill_scale_up_and_prefix_cache_match_stock(qwen_run):
    assert_same_outputs(qwen_run["outs"], qwen_run["ref"])
    stats = qwen_run["stats"]
    assert stats["parallel_prefills"] == 2 and stats["scale_up"] == 1
    # the first spanning prompt ran as a ring; the repeat hit the prefix cache on chunk 0,
    # so its chunks asked for the earlier chunks' attention instead
    assert stats["ring_prefills"] == 1
    assert stats["preemptions"] == [0, 0] and stats["kv_used_blocks"] == [0, 0]


@pytest.fixture(scope="module")
def alise_run(tiny_models):
    """Spanning requests under the length-aware per-instance scheduler (ALISE order in each
    instance, placement by predicted work across them), ring prefills of hinted prompts
    there, and a bad hint."""
    rng = random.Random(9)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])
               for n in (2880, 50, 300, 2200, 10, 900)]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True)
              for m in (16, 40, 8, 24, 100, 60)]
    run = {}
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN, additional_config={
                              "esp": {"instances": 2, "policy": "alise", "predictor": "online"}})
    try:
        sched = esp_scheduler(llm)
        run["outs"] = llm.generate(prompts, params, use_tqdm=False)
        run["stats"] = sched.esp_stats()
        run["ring"] = llm.generate(*_ring_batch(), use_tqdm=False)
        run["ring_stats"] = sched.esp_stats()
        try:
            llm.generate(prompts[1:2], SamplingParams(max_tokens=4,
                                                      extra_args={"esp_instances": 0}),
                         use_tqdm=False)
        except ValueError as e:
            run["bad"] = str(e)
        run["after_bad"] = llm.generate(prompts[1:2], params[1:2], use_tqdm=False)
    finally:
        close_engine(llm)
    ref = make_engine(tiny_models["llama"], None, kv_cache_memory_bytes=2 * POOL,
                      max_model_len=MAX_LEN)
    try:
        run["ref"] = ref.generate(prompts, params, use_tqdm=False)
        run["ring_ref"] = ref.generate(*_ring_batch(), use_tqdm=False)
    finally:
        close_engine(ref)
    return run


def test_spanning_under_alise_policy_matches_stock(alise_run):
    got = [list(o.outputs[0].token_ids) for o in alise_run["outs"]]
    assert got == [list(o.outputs[0].token_ids) for o in alise_run["ref"]]
    assert alise_run["stats"]["spanning_requests"] == 2
    assert alise_run["stats"]["kv_used_blocks"] == [0, 0]


def test_ring_prefill_runs_under_alise_and_matches_stock(alise_run):
    """Chunk 0 of a ring is pinned ahead of the length-aware order, so hinted prompts get
    their parallel (ring) prefill under --esp-policy alise too."""
    before, after = alise_run["stats"], alise_run["ring_stats"]
    assert after["ring_prefills"] - before["ring_prefills"] == 2
    assert after["parallel_prefills"] - before["parallel_prefills"] == 2
    assert_same_outputs(alise_run["ring"], alise_run["ring_ref"])


def test_bad_esp_instances_hint_is_refused_and_the_engine_goes_on(alise_run):
    assert "esp_instances must be an integer from 1 to 2" in alise_run["bad"]
    assert len(alise_run["after_bad"][0].outputs[0].token_ids) == 40