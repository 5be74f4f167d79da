"""Length-aware placement across ESP instances (``--esp-policy alise``), on a real
``ESPScheduler`` of two ``AliseScheduler`` instances with no workers (seconds).

The instances are built the way vLLM's ``tests/v1/core/utils.py`` builds a scheduler: a real
``VllmConfig`` for the tiny model and a synthetic ``KVCacheConfig``. The oracle predictor
reads each request's output length from ``extra_args["output_len"]``.
"""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from vllm_esp.integration.scheduler import ESPScheduler
from vllm_esp.integration.spanning import views
from vllm_esp.scheduling.queue import ScoredRequestQueue

BS, BLOCKS = 16, 64


def _config(tiny_models, policy: str) -> VllmConfig:
    sc = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=1024, max_model_len=1024,
                         enable_chunked_prefill=True, is_encoder_decoder=False)
    mc = ModelConfig(model=tiny_models["llama"], dtype="float32", seed=0)
    cc = CacheConfig(block_size=BS, cache_dtype="auto", enable_prefix_caching=False)
    cc.num_gpu_blocks = BLOCKS
    return VllmConfig(scheduler_config=sc, model_config=mc, cache_config=cc,
                      additional_config={"esp": {"instances": 2, "policy": policy,
                                                 "predictor": "oracle"}})


def _scheduler(tiny_models, policy: str = "alise") -> ESPScheduler:
    config = _config(tiny_models, policy)
    kv = KVCacheConfig(num_blocks=BLOCKS, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(["layer"], FullAttentionSpec(block_size=BS, num_kv_heads=1,
                                                      head_size=1, dtype=torch.float32))])
    return ESPScheduler(vllm_config=config, kv_cache_config=kv, block_size=BS,
                        structured_output_manager=StructuredOutputManager(config))


def _request(rid: str, prompt: int, output: int) -> Request:
    params = SamplingParams(max_tokens=1000, extra_args={"output_len": output})
    return Request(request_id=rid, prompt_token_ids=list(range(10, 10 + prompt)),
                   sampling_params=params, pooling_params=None)


@pytest.fixture
def alise(tiny_models):
    return _scheduler(tiny_models)


def test_dispatch_goes_to_the_least_predicted_work_not_the_most_free_kv(alise):
    alise.add_request(_request("long", 16, 900))  # few blocks, much decode ahead
    alise.add_request(_request("short", 300, 4))  # many blocks, almost done once prefilled
    assert alise.pool.instance_of == {"long": 0, "short": 1}
    assert alise.pool.headroom(0) > alise.pool.headroom(1)  # the KV rule would pick 0
    alise.add_request(_request("next", 16, 50))
    assert alise.pool.instance_of["next"] == 1


def test_fcfs_policy_keeps_the_kv_headroom_rule(tiny_models):
    fcfs = _scheduler(tiny_models, "fcfs")
    assert not fcfs.length_aware
    fcfs.add_request(_request("long", 16, 900))
    fcfs.add_request(_request("short", 300, 4))
    fcfs.add_request(_request("next", 16, 50))
    assert fcfs.pool.instance_of["next"] == 0


def test_a_waiting_request_moves_to_an_instance_with_nothing_waiting(alise):
    for rid, out in (("a", 400), ("b", 20), ("c", 300)):
        alise._dispatch(_request(rid, 32, out), among=[0])  # all placed on instance 0
    src, dst = alise.instances
    job = src.jobs["b"]
    alise._work = None
    alise._reroute_waiting()
    # the head of instance 0's length-aware queue (the shortest) moved, with its prediction
    assert alise.pool.instance_of == {"a": 0, "b": 1, "c": 0}
    assert "b" not in src.requests and "b" not in src.jobs
    assert dst.requests["b"].status == RequestStatus.WAITING and dst.jobs["b"] is job
    assert [r.request_id for r in src.waiting] == ["c", "a"]
    assert alise.esp_stats()["rerouted"] == 1
    # both instances start their requests in their next steps
    assert set(dst.schedule().num_scheduled_tokens) == {"b"}
    assert set(src.schedule().num_scheduled_tokens) == {"a", "c"}
    # nothing waits any more: nothing moves
    alise._work = None
    alise._reroute_waiting()
    assert alise.esp_stats()["rerouted"] == 1


def test_requests_that_ran_never_move(alise):
    r = _request("p", 32, 10)
    alise._dispatch(r, among=[0])
    r.num_preemptions = 1  # a runner knows it (preempted): it stays
    assert not views.can_move(alise.instances[0], r)


def test_a_pinned_view_stays_ahead_of_shorter_requests():
    jobs = {}
    q = ScoredRequestQueue(lambda r: (jobs[r.request_id],))
    chunk0, short = _request("chunk0", 8, 1), _request("short", 8, 1)
    jobs.update(chunk0=50.0, short=1.0)
    q.add_request(chunk0)
    q.pin_front(chunk0)
    q.add_request(short)
    assert q.peek_request() is chunk0
    q.prepend_request(q.pop_request())  # vLLM skips it this pass and puts it back
    later = _request("later", 8, 1)
    jobs["later"] = 0.5
    q.add_request(later)
    assert [r.request_id for r in q] == ["chunk0", "later", "short"]
    assert q.pop_request() is chunk0
    chunk0.status = RequestStatus.RUNNING  # scheduled: the next sort drops the pin
    assert [r.request_id for r in q] == ["later", "short"]
    chunk0.status = RequestStatus.PREEMPTED  # back later: its key decides
    q.add_request(chunk0)
    assert [r.request_id for r in q] == ["later", "short", "chunk0"]


def test_ring_room_accepts_a_length_aware_queue(alise):
    assert all(views.keeps_front(s) for s in alise.instances)


def test_a_prediction_still_to_come_follows_a_moved_request(alise):
    """A background (retrieval) prediction computed for a request that moved meanwhile is
    installed on the instance that now holds it, not dropped by the one it left."""
    src, dst = alise.instances
    r = _request("m", 32, 40)
    alise._dispatch(r, among=[0])
    src._pending_predictions.add("m")  # as if the prediction process had it
    state = src.release_waiting(r)
    src.requests.pop("m")
    src.waiting.remove_request(r)
    dst.adopt_waiting(r, state)
    assert "m" not in src._pending_predictions and "m" in dst._pending_predictions
    src.predictor.poll = lambda: [("m", 321.0)]  # the prediction arrives where it was asked
    src._collect_predictions()
    assert dst.jobs["m"].predicted_len == 321.0 and "m" not in dst._pending_predictions
