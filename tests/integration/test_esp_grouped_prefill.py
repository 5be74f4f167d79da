"""The global manager plans each step's new requests together (LoongServe's batching step).

Two instances and a cost profile in which a 2-instance ring prefills an 800-token prompt faster
than one instance, and in which a ring's fixed cost is large. The planner's DP over the
requests that arrived since the last step (``PrefillPlanner.plan``) decides which prompts
share a prefill and on which instances:

- three 800-token prompts arriving together are prefilled by one batched ring over both
  instances, each keeping its KV on the ring's master (they fit one pool);
- two 800-token prompts and a short one: the short one gets an instance of its own and the
  two long ones share the other (a ring would delay the short prompt, which weighs most per
  token), so the manager, not the pool's headroom, dispatches them.

Outputs equal stock vLLM's.
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.planner.prefill_groups import PrefillPlanner
from vllm_esp.planner.cost_model import CostModel, Linear3
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

from tests.planner.helpers import cost_model

POOL = 4 * MiB  # per instance: 31 blocks of 128 tokens
MAX_LEN = 2048

# k = 2 halves the per-token cost and adds 14 ms of fixed cost per ring
BATCHING_WINS = {1: Linear3(0.001, 3e-5, 1e-9), 2: Linear3(0.015, 1e-5, 0.5e-9)}
# k = 2 adds only 5 ms: two long prompts are better served one ring after the other
RINGS_IN_TURN = {1: Linear3(0.001, 2e-5, 1e-9), 2: Linear3(0.006, 1e-5, 0.5e-9)}


def _model(prefill) -> CostModel:
    return cost_model(prefill, decode={1: Linear3(0.001, 1e-5, 1e-8)})


def _tokens(n: int, seed: int) -> TokensPrompt:
    rng = random.Random(seed)
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])


def _three_long():
    prompts = [_tokens(800, 1), _tokens(800, 2), _tokens(800, 4)]
    params = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.9, seed=7, max_tokens=8, ignore_eos=True,
                             logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)]
    return prompts, params


def _two_long_one_short():
    prompts = [_tokens(800, 5), _tokens(40, 3), _tokens(800, 6)]
    params = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
              SamplingParams(temperature=0.9, seed=3, max_tokens=8, ignore_eos=True)]
    return prompts, params


def _groups(planner, lengths, free):
    groups, left = planner.plan(lengths, free)
    return [(sorted(g.prompts), g.instances) for g in groups], left


def test_the_plan_minimises_the_batching_objective():
    # Σ T·Σ1/l over contiguous groups of sorted prompts on instances (most free first)
    batching = PrefillPlanner(_model(BATCHING_WINS), 128)
    in_turn = PrefillPlanner(_model(RINGS_IN_TURN), 128)
    assert _groups(batching, [800], [31, 31]) == ([([0], [0, 1])], [])  # alone: a ring
    assert _groups(batching, [200], [31, 31]) == ([([0], [0])], [])
    # two prompts, two instances: one each beats a shared ring
    assert _groups(batching, [800, 800], [31, 31]) == ([([0], [0]), ([1], [1])], [])
    # three: the ring's fixed cost is paid once for all of them
    assert _groups(batching, [800, 800, 800], [31, 31]) == ([([0, 1, 2], [0, 1])], [])
    # a short prompt weighs most per token: it gets an instance of its own
    assert _groups(batching, [800, 40, 800], [31, 31]) == ([([1], [0]), ([0, 2], [1])], [])
    # the instance with most free blocks comes first
    assert _groups(batching, [800, 40, 800], [20, 31]) == ([([1], [1]), ([0, 2], [0])], [])
    # a cheap ring does not pay for three prompts
    assert _groups(in_turn, [800, 800, 800], [31, 31]) == ([([0], [0]), ([1, 2], [1])], [])
    # nothing fits: the longest are left for the pool to queue
    assert _groups(batching, [800, 3000, 100], [7, 7]) == ([([2], [0]), ([0], [1])], [1])
    assert batching.plan([800], []) == ([], [0])
    # never more instances than the profile measured
    assert _groups(batching, [800], [31, 31, 31]) == ([([0], [0, 1])], [])


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    profile = tmp_path_factory.mktemp("profile") / "batching_wins.json"
    _model(BATCHING_WINS).save(profile)
    out = {}
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2, "profile": str(profile)}})
    try:
        sched = esp_scheduler(llm)
        out["three"] = llm.generate(*_three_long(), use_tqdm=False)
        out["three_stats"] = sched.esp_stats()
        out["three_comm"] = llm.collective_rpc("esp_comm_calls")
        out["placed"] = record_placements(sched)
        out["mixed"] = llm.generate(*_two_long_one_short(), use_tqdm=False)
        out["stats"] = sched.esp_stats()
        out["open_spans"] = dict(sched.spans.spans)
    finally:
        close_engine(llm)
    ref = make_engine(tiny_models["llama"], None, kv_cache_memory_bytes=2 * POOL,
                      max_model_len=MAX_LEN)
    try:
        out["ref_three"] = ref.generate(*_three_long(), use_tqdm=False)
        out["ref_mixed"] = ref.generate(*_two_long_one_short(), use_tqdm=False)
    finally:
        close_engine(ref)
    return out


def test_three_prompts_arriving_together_share_one_ring(run):
    stats = run["three_stats"]
    assert stats["planned_prefill_instances"] == {2: 3}
    assert stats["parallel_prefills"] == 3 and stats["ring_prefills"] == 3
    assert stats["batched_ring_prefills"] == 3
    # one ring step: each worker shifted K/V once per layer, for all three prompts together
    layers = 2  # the tiny model
    assert [c["ring_shift"] for c in run["three_comm"]] == [layers, layers]
    # their KV stayed on the master: nothing spans, nothing left
    assert stats["spanning_requests"] == 0 and stats["kv_used_blocks"] == [0, 0]
    assert_same_outputs(run["three"], run["ref_three"])


def test_the_manager_dispatches_a_short_prompt_apart_from_two_long_ones(run):
    stats, before = run["stats"], run["three_stats"]
    assert stats["planned_prefill_instances"] == {2: 3, 1: 3}
    assert stats["ring_prefills"] == 3  # no new ring
    # the pool's headroom alone would put the second long prompt next to the short one
    # (the engine's request ids carry a suffix after the user's)
    at = {rid.rsplit("-", 1)[0]: i[0] for rid, i in run["placed"].items()}
    long_a, short, long_b = (at[o.request_id] for o in run["mixed"])
    assert long_a == long_b != short, run["placed"]
    assert stats["spanning_requests"] == 0 and run["open_spans"] == {}
    assert stats["kv_used_blocks"] == [0, 0] and stats["preemptions"] == [0, 0]
    assert_same_outputs(run["mixed"], run["ref_mixed"])
