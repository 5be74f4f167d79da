"""The global manager groups requests into one prefill ring (LoongServe's batching step).

Two instances and a cost profile in which a 2-instance ring prefills an 800-token prompt faster
than one instance, and in which a ring's fixed cost is large enough that two such prompts
arriving together are better prefilled by one batched ring than one ring after the other
(``PrefillPlanner.joins_pending_ring``). The first prompt gets its own ring; the second finds
both instances reserved by it and joins it. Both keep their KV on the ring's master (the
prompts fit one pool), so neither spans instances afterwards. Outputs equal stock vLLM's.
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.integration.elastic_prefill import PrefillPlanner
from vllm_esp.planner.cost_model import CostModel, Linear3, ProfileMeta
from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    MiB,
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)

POOL = 4 * MiB  # per instance: 31 blocks of 128 tokens
MAX_LEN = 2048

# k = 2 halves the per-token cost and adds 14 ms of fixed cost per ring
BATCHING_WINS = {1: Linear3(0.001, 3e-5, 1e-9), 2: Linear3(0.015, 1e-5, 0.5e-9)}
# k = 2 adds only 5 ms: two long prompts are better served one ring after the other
RINGS_IN_TURN = {1: Linear3(0.001, 2e-5, 1e-9), 2: Linear3(0.006, 1e-5, 0.5e-9)}


def _model(prefill) -> CostModel:
    return CostModel(meta=ProfileMeta(model="tiny-llama", dtype="float32", tp_size=1,
                                      device="test", source="estimated", notes="synthetic"),
                     prefill=prefill, decode={1: Linear3(0.001, 1e-5, 1e-8)},
                     kv_bytes_per_token=1024, migration_bandwidth=1e9)


def _tokens(n: int, seed: int) -> TokensPrompt:
    rng = random.Random(seed)
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])


def _workload():
    prompts = [_tokens(800, 1), _tokens(800, 2), _tokens(40, 3)]
    params = [SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.9, seed=7, max_tokens=8, ignore_eos=True,
                             logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)]
    return prompts, params


def test_join_rule_follows_the_batching_objective():
    # Σ T·Σ1/l of one batched ring now vs the pending ring, then this prompt on its best k
    batching = PrefillPlanner(_model(BATCHING_WINS), 128)
    in_turn = PrefillPlanner(_model(RINGS_IN_TURN), 128)
    assert batching.instances_for(800, [31, 31]) == 2  # alone, a ring wins
    assert batching.joins_pending_ring(800, [800], 2)
    assert batching.joins_pending_ring(600, [800], 2)
    # a longer prompt would delay the pending one by more than it saves itself
    assert not batching.joins_pending_ring(1200, [800], 2)
    assert not batching.joins_pending_ring(100, [800], 2)  # no block for the second chunk
    assert not batching.joins_pending_ring(800, [800], 1)  # not a ring
    assert not batching.joins_pending_ring(800, [800], 3)  # beyond the measured k
    assert in_turn.instances_for(1500, [31, 31]) == 2
    assert not in_turn.joins_pending_ring(1500, [1500], 2)
    assert not in_turn.joins_pending_ring(1400, [1700], 2)


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    profile = tmp_path_factory.mktemp("profile") / "batching_wins.json"
    _model(BATCHING_WINS).save(profile)
    prompts, params = _workload()
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=POOL,
                          max_model_len=MAX_LEN,
                          additional_config={"esp": {"instances": 2, "profile": str(profile)}})
    try:
        sched = esp_scheduler(llm)
        out = {"esp": llm.generate(prompts, params, use_tqdm=False),
               "stats": sched.esp_stats(), "open_spans": dict(sched.spans.spans),
               "comm": llm.collective_rpc("esp_comm_calls")}
    finally:
        close_engine(llm)
    out["ref"] = generate_once(tiny_models["llama"], None, prompts, params,
                               kv_cache_memory_bytes=2 * POOL, max_model_len=MAX_LEN)
    return out


def test_two_prompts_arriving_together_share_one_ring(run):
    stats = run["stats"]
    assert stats["planned_prefill_instances"] == {2: 2, 1: 1}
    assert stats["parallel_prefills"] == 2 and stats["ring_prefills"] == 2
    assert stats["batched_ring_prefills"] == 2
    # one ring step: each worker shifted K/V once per layer, for both prompts together
    layers = 2  # the tiny model
    assert [c["ring_shift"] for c in run["comm"]] == [layers, layers]


def test_their_kv_stays_on_the_master_and_outputs_match_stock(run):
    stats = run["stats"]
    assert stats["spanning_requests"] == 0 and run["open_spans"] == {}
    assert stats["kv_used_blocks"] == [0, 0] and stats["preemptions"] == [0, 0]
    assert_same_outputs(run["esp"], run["ref"])
