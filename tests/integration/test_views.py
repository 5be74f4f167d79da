"""The views' operations on a real vLLM ``Scheduler`` (no workers, seconds): each leaves the
block accounting right (``integration/spanning/views.py``).

The scheduler is built the way vLLM's own ``tests/v1/core/utils.py`` builds one: a real
``VllmConfig`` for the tiny model and a synthetic ``KVCacheConfig`` of 40 blocks of 16 tokens.
"""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from vllm_esp.integration.spanning import views

BS, BLOCKS = 16, 40


@pytest.fixture(scope="module")
def config(tiny_models):
    sc = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=1024,
                         enable_chunked_prefill=True, is_encoder_decoder=False)
    mc = ModelConfig(model=tiny_models["llama"], dtype="float32", seed=0)
    cc = CacheConfig(block_size=BS, cache_dtype="auto", enable_prefix_caching=False)
    cc.num_gpu_blocks = BLOCKS
    return VllmConfig(scheduler_config=sc, model_config=mc, cache_config=cc)


@pytest.fixture
def sched(config):
    kv = KVCacheConfig(num_blocks=BLOCKS, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BS, num_kv_heads=1,
                                                      head_size=1, dtype=torch.float32))])
    s = Scheduler(vllm_config=config, kv_cache_config=kv, log_stats=False, block_size=BS,
                  structured_output_manager=StructuredOutputManager(config))
    views.check_scheduler(s)
    return s


def free(s) -> int:
    return s.kv_cache_manager.block_pool.get_num_free_blocks()


def request(rid: str, n: int) -> Request:
    return Request(request_id=rid, prompt_token_ids=list(range(10, 10 + n)),
                   sampling_params=SamplingParams(max_tokens=8), pooling_params=None)


def run_one_step(s) -> None:
    out = s.schedule()
    assert out.total_num_scheduled_tokens > 0


def test_skip_prefix_admits_a_view_as_partly_computed(sched):
    view = request("v", 100)
    views.skip_prefix(sched, view, 64)  # tokens [0, 64) live on other instances
    sched.add_request(view)
    before = free(sched)
    out = sched.schedule()
    assert out.num_scheduled_tokens["v"] == 36  # only its chunk
    assert before - free(sched) == 3  # 36 tokens (+1 for the next) -> 3 real blocks
    assert views.held_blocks(sched, "v") == 4 + 3  # 4 null prefix entries + 3 real
    assert views.block_ids(sched, "v")[:4] == [0, 0, 0, 0]  # the null block


def test_allocate_prefix_gives_real_blocks_for_the_prefix(sched):
    view = request("m", 100)
    before = free(sched)
    views.allocate_prefix(sched, view, 64)
    assert before - free(sched) == 4 and view.num_computed_tokens == 64
    sched.add_request(view)
    run_one_step(sched)
    assert views.held_blocks(sched, "m") == 7 and 0 not in views.block_ids(sched, "m")


def test_hand_over_moves_blocks_to_a_shadow_without_freeing(sched):
    real = request("r", 40)
    sched.add_request(real)
    run_one_step(sched)
    blocks, before = views.block_ids(sched, "r"), free(sched)
    shadow = views.new_shadow(real, 0, 40)
    views.hand_over(sched, real, shadow)
    assert free(sched) == before  # nothing freed, nothing copied
    assert views.block_ids(sched, shadow.request_id) == blocks
    assert "r" not in sched.requests and real not in sched.running
    assert "r" in sched.finished_req_ids  # its runner drops the request
    assert shadow.status == RequestStatus.RUNNING


def test_park_unpark_keep_the_blocks(sched):
    view = request("p", 40)
    sched.add_request(view)
    run_one_step(sched)
    held = free(sched)
    views.park(sched, view)
    assert view not in sched.running and free(sched) == held
    views.unpark(sched, view)
    views.unpark(sched, view)  # idempotent
    assert sched.running.count(view) == 1
    sched.finish_requests("p", RequestStatus.FINISHED_ABORTED)
    assert free(sched) == BLOCKS - 1  # every block back (minus vLLM's null block)


def test_to_front_puts_a_view_ahead_of_the_queue(sched):
    for rid in ("a", "b"):
        sched.add_request(request(rid, 10))
    c = request("c", 10)
    sched.add_request(c)
    views.to_front(sched, c)
    assert sched.waiting.peek_request() is c


def test_preempt_frees_and_requeues_once(sched):
    r = request("q", 40)
    sched.add_request(r)
    run_one_step(sched)
    views.preempt(sched, r, 0.0)
    assert r.status == RequestStatus.PREEMPTED and r.num_computed_tokens == 0
    assert free(sched) == BLOCKS - 1 and len(sched.waiting) == 1


def test_take_out_resets_a_request_for_another_instance(sched):
    r = request("t", 40)
    sched.add_request(r)
    run_one_step(sched)
    r.append_output_token_ids([5, 6])
    assert views.take_out(sched, r) == [5, 6]
    assert r.status == RequestStatus.WAITING and r.num_computed_tokens == 0
    assert free(sched) == BLOCKS - 1 and "t" not in sched.requests


def test_new_shadow_shares_the_real_requests_hashing(sched):
    real = request("x", 50)
    shadow = views.new_shadow(real, 1, 32, keeps_kv=False)
    assert shadow.request_id.endswith("#esp-chunk1") and shadow.num_prompt_tokens == 32
    assert shadow.cache_salt == "esp-compute-only:x"
    views.set_runner_mode_v1(sched)
    assert sched.use_v2_model_runner is False
