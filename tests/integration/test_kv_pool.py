"""The distributed KV pool: dispatch rule, accounting back to all-free, preemption.

The engine tests run EngineCore in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the ESP
scheduler and its per-instance block pools can be inspected; workers are still processes.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.v1.request import RequestStatus

from vllm_esp.integration.kv_pool import DistributedKVPool
from vllm_esp.testing.engines import (
    MiB,
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)


# ---- dispatch rule (no engine) ---------------------------------------------------------
def _fake_instance(free: int, total: int, waiting: list[int] = (), running: int = 0):
    reqs = {f"w{i}": SimpleNamespace(request_id=f"w{i}", status=RequestStatus.WAITING, num_tokens=n)
            for i, n in enumerate(waiting)}
    reqs.update({f"r{i}": SimpleNamespace(request_id=f"r{i}", status=RequestStatus.RUNNING,
                                          num_tokens=1) for i in range(running)})
    pool = SimpleNamespace(get_num_free_blocks=lambda: free, num_gpu_blocks=total + 1)
    held = {rid: ([1, 2],) for rid in reqs if rid.startswith("r")}
    manager = SimpleNamespace(block_pool=pool, get_block_ids=lambda rid: held.get(rid, ([],)))
    return SimpleNamespace(kv_cache_manager=manager, requests=reqs)


def test_dispatch_prefers_most_free_kv():
    pool = DistributedKVPool([_fake_instance(10, 20), _fake_instance(15, 20)], block_size=16)
    assert pool.choose_instance(None) == 1


def test_dispatch_counts_queued_prompts_against_free_kv():
    # instance 1 has more free blocks, but a queued 200-token prompt will take 13 of them
    pool = DistributedKVPool([_fake_instance(10, 20), _fake_instance(15, 20, waiting=[200])],
                             block_size=16)
    assert pool.choose_instance(None) == 0


def test_dispatch_ties_go_to_fewest_requests():
    pool = DistributedKVPool([_fake_instance(10, 20, running=3), _fake_instance(10, 20, running=1)],
                             block_size=16)
    assert pool.choose_instance(None) == 1


def test_dispatch_spreads_one_request_at_a_time_over_equal_instances():
    """Idle, equal instances: successive requests go round the instances, not all to 0."""
    pool = DistributedKVPool([_fake_instance(10, 20) for _ in range(3)], block_size=16)
    assert [pool.choose_instance(None) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    # the rotation only breaks ties: more free KV still wins
    pool.schedulers[1] = _fake_instance(12, 20)
    assert [pool.choose_instance(None) for _ in range(2)] == [1, 1]
    assert pool.choose_instance(None, among=[0, 2]) == 2  # after 1 comes 2


def _scale_up_target(running: list[int], free: list[int], need: list[int], src: int = 0,
                     reserved=()):
    from vllm_esp.integration.scheduler import ESPScheduler

    fake = SimpleNamespace(instances=[SimpleNamespace(running=[object()] * n) for n in running],
                           spans=SimpleNamespace(reserved=set(reserved)))
    fake._decoding = lambda k: ESPScheduler._decoding(fake, k)
    return ESPScheduler._scale_up_target(fake, src, free, need)


def test_scale_up_prefers_an_idle_instance_then_merges_into_the_roomiest_busy_one():
    # instance 2 is idle with 2 free blocks; instance 1 is busy with 9 spare: idle wins
    assert _scale_up_target(running=[3, 2, 0], free=[0, 10, 2], need=[1, 1, 0]) == 2
    # the idle instance has no free block: merge into the busy instance with most room
    assert _scale_up_target(running=[3, 2, 0, 1], free=[0, 10, 0, 4], need=[1, 1, 0, 0]) == 1
    # reserved instances (a parallel prefill next step) and the source itself never count
    assert _scale_up_target(running=[0, 2, 0], free=[9, 3, 8], need=[0, 0, 0],
                            reserved={2}) == 1
    # no other instance has a block left: None (vLLM preempts, recompute)
    assert _scale_up_target(running=[3, 2], free=[0, 1], need=[1, 1]) is None


def test_placement_map_reports_blocks_per_instance():
    pool = DistributedKVPool([_fake_instance(10, 20), _fake_instance(10, 20, running=1)],
                             block_size=16)
    pool.assign("r0", 1)
    assert pool.placement("r0") == {1: 2}
    pool.forget("r0")
    assert pool.placement("r0") == {} and pool.instance_of == {}


# ---- engine: accounting and preemption -----------------------------------------------------
def _inproc_engine(model, instances, **kw):
    with engine_core_in_process():
        return make_engine(model, instances, **kw)


def _workload():
    rng = random.Random(3)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(rng.randrange(100, 127))])
               for _ in range(24)]
    return prompts, SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)


_ref_cache: dict = {}


def _stock_reference(model):
    if model not in _ref_cache:
        _ref_cache[model] = generate_once(model, None, *_workload())
    return _ref_cache[model]


@pytest.fixture(scope="module")
def preemption_run(tiny_models):
    """ESP, 2 instances of 16 blocks (2048 tokens) each, 24 requests needing 2 blocks each."""
    prompts, params = _workload()
    llm = _inproc_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=2 * MiB,
                         max_model_len=1024)
    try:
        sched = esp_scheduler(llm)
        outs = llm.generate(prompts, params, use_tqdm=False)
        result = {"outs": outs, "stats": sched.esp_stats(),
                  "instance_of": dict(sched.pool.instance_of),
                  "total": [sched.pool.total_blocks(i) for i in range(2)]}
    finally:
        close_engine(llm)
    result["ref"] = _stock_reference(tiny_models["llama"])
    return result


def test_small_pool_preempts_and_still_matches_stock(preemption_run):
    stats = preemption_run["stats"]
    assert sum(stats["preemptions"]) > 0, "workload was meant to overflow the pools"
    for ref, got in zip(preemption_run["ref"], preemption_run["outs"]):
        assert list(got.outputs[0].token_ids) == list(ref.outputs[0].token_ids)
        assert len(got.outputs[0].token_ids) == 64


def test_every_instance_pool_is_all_free_after_the_run(preemption_run):
    stats = preemption_run["stats"]
    assert stats["kv_used_blocks"] == [0, 0]
    assert stats["kv_total_blocks"] == preemption_run["total"]
    assert stats["running"] == [0, 0] and stats["waiting"] == [0, 0]
    assert preemption_run["instance_of"] == {}  # placement map emptied as requests finished


def test_both_instances_served_requests(preemption_run):
    # 24 equal requests arriving at once over 2 equal pools: queued demand splits them evenly
    assert preemption_run["stats"]["dispatched"] == [12, 12]


def test_alise_policy_inside_esp_instances_matches_stock(tiny_models):
    """--esp-policy alise: the length-aware scheduler runs in each instance (small pools)."""
    prompts, params = _workload()
    llm = _inproc_engine(tiny_models["llama"], 2, kv_cache_memory_bytes=2 * MiB,
                         max_model_len=1024, esp_policy="alise", esp_predictor="online")
    try:
        sched = esp_scheduler(llm)
        assert all(type(s).__name__ == "AliseScheduler" for s in sched.instances)
        outs = llm.generate(prompts, params, use_tqdm=False)
        stats = sched.esp_stats()
    finally:
        close_engine(llm)
    ref = _stock_reference(tiny_models["llama"])
    for r, g in zip(ref, outs):
        assert list(g.outputs[0].token_ids) == list(r.outputs[0].token_ids)
    assert stats["kv_used_blocks"] == [0, 0]
