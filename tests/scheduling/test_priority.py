"""Ordering, aging bound, re-prediction and preemption choice of the length-aware policy."""

import pytest

from vllm_esp.predictor import PredictRequest, make_predictor
from vllm_esp.scheduling.config import SchedulingConfig
from vllm_esp.scheduling.priority import ExecTimeModel, JobState, PriorityEstimator


def job(rid, predicted, arrival=0.0, prompt=10, generated=0, waiting=True, computed=0):
    return JobState(req_id=rid, arrival=arrival, prompt_len=prompt, predicted_len=predicted,
                    predict_req=PredictRequest([1]), generated=generated, computed=computed,
                    waiting=waiting, wait_since=arrival)


def est(**cfg):
    return PriorityEstimator(SchedulingConfig(**cfg), make_predictor("oracle"))


def order(e, jobs, now):
    return [j.req_id for j in sorted(jobs, key=lambda j: e.key(j, now))]


def test_config_validation_and_section_parsing():
    cfg = SchedulingConfig.from_additional_config(
        {"esp": {"policy": "sjf", "predictor": "retrieval", "executor_only_key": 1}})
    assert cfg.policy == "sjf" and cfg.predictor == "retrieval"
    assert SchedulingConfig.from_additional_config(None).policy == "alise"
    for bad in ({"policy": "lifo"}, {"swap": "maybe"}, {"preempt_ratio": 0.5},
                {"max_wait_s": 0}, {"aging_rate": -1}, {"predictor_options": []}):
        with pytest.raises(ValueError):
            SchedulingConfig(**bad)


def test_fcfs_orders_by_arrival_sjf_by_remaining_time():
    jobs = [job("long", 500, arrival=0), job("short", 5, arrival=1), job("mid", 50, arrival=2)]
    assert order(est(policy="fcfs"), jobs, 3) == ["long", "short", "mid"]
    assert order(est(policy="sjf"), jobs, 3) == ["short", "mid", "long"]


def test_prefill_counts_in_remaining_time():
    e = est(policy="sjf", prefill_s_per_token=1e-3, decode_s_per_token=1e-3)
    big_prompt = job("big_prompt", 10, prompt=5000)
    small = job("small", 100, prompt=10)
    assert order(e, [big_prompt, small], 0) == ["small", "big_prompt"]
    # once its prompt is in the cache, only decoding remains
    big_prompt.computed, big_prompt.waiting = 5000, False
    assert order(e, [big_prompt, small], 0) == ["big_prompt", "small"]


def test_remaining_time_shrinks_as_tokens_are_produced():
    e = est(policy="sjf")
    j = job("a", 100)
    t0 = e.remaining_time(j)
    j.generated = 60
    assert e.remaining_time(j) < t0 * 0.5


def test_aging_bounds_the_wait_of_a_long_job():
    # the absolute bound, the same for every request (max_slowdown off)
    e = est(policy="alise", max_wait_s=10.0, aging_rate=0.0, max_slowdown=None)
    long = job("long", 10_000, arrival=0.0)
    # a stream of short jobs keeps arriving; before the bound the long one loses to all
    shorts = [job(f"s{i}", 5, arrival=float(i)) for i in range(20)]
    assert order(e, [long] + shorts[:9], 9.0)[-1] == "long"
    # at the bound it goes first, ahead of every fresher short job
    assert order(e, [long] + shorts, 10.0)[0] == "long"
    assert e.is_starved(long, 10.0) and not e.is_starved(shorts[5], 10.0)


def test_bounded_slowdown_lets_short_jobs_overtake_until_k_times_own_run_time():
    # 500 tokens at 2 ms: about 1 s of run time, so with K = 4 it is starved after ~4 s of
    # waiting, not after the 1 s floor (the old rule: starved at 1 s, then goes first)
    e = est(policy="alise", aging_rate=0.0, max_slowdown=4.0, min_max_wait_s=1.0)
    long = job("long", 500, arrival=0.0)
    run = e.service_time(long)
    assert run == pytest.approx(1.0, rel=0.02)  # + prefill and context terms
    shorts = [job(f"s{i}", 5, arrival=0.5 * i) for i in range(12)]
    for now in (1.5, 3.0, 3.9):  # past the floor, below K x its run time: shorts go first
        fresh = [s for s in shorts if s.arrival <= now]
        assert not e.is_starved(long, now)
        assert order(e, [long] + fresh, now)[-1] == "long"
    now = 4.0 * run + 0.01
    assert e.is_starved(long, now)
    assert order(e, [long] + shorts, now)[0] == "long"
    # a short job is starved only at the floor (K x 10 ms is far below it)
    assert not e.is_starved(shorts[0], 0.99) and e.is_starved(shorts[0], 1.0)
    # the old adaptive rule would have starved the long job at the 1 s floor already
    old = est(policy="alise", aging_rate=0.0, max_slowdown=None, min_max_wait_s=1.0)
    assert old.is_starved(long, 1.5) and order(old, [long] + shorts[:4], 1.5)[0] == "long"
    # max_wait_s caps the bound; re-prediction (outliving the prediction) raises it
    assert est(policy="alise", max_slowdown=4.0, max_wait_s=2.0).wait_bound(long) == 2.0
    ran = job("ran", 500, generated=600, waiting=False, computed=610)
    assert e.wait_bound(ran) > e.wait_bound(long)
    with pytest.raises(ValueError):
        SchedulingConfig(max_slowdown=0)


def test_adaptive_max_wait_follows_mean_latency():
    e = est(policy="alise", max_wait_factor=3.0, min_max_wait_s=0.5)
    assert e.max_wait() == 0.5
    for s in (1.0, 2.0, 3.0):
        e.record_latency(s)
    assert e.max_wait() == pytest.approx(6.0)


def test_linear_aging_lets_a_waiting_job_overtake():
    e = est(policy="alise", aging_rate=1.0, max_wait_s=1e9, decode_s_per_token=0.01,
            prefill_s_per_token=0.0, decode_s_per_context_token=0.0)
    old = job("old", 200, arrival=0.0)  # ~2 s of work
    new = job("new", 50, arrival=1.0)  # ~0.5 s of work
    assert order(e, [old, new], 1.0) == ["new", "old"]  # 2 - 1 > 0.5
    new.arrival = new.wait_since = 2.0
    assert order(e, [old, new], 2.0) == ["old", "new"]  # credited 2 s: 2 - 2 < 0.5


def test_reprediction_when_outliving_the_prediction():
    p = make_predictor("online")
    for length in (10, 10, 400):
        p.observe(PredictRequest([1]), length)
    e = PriorityEstimator(SchedulingConfig(policy="sjf"), p)
    j = job("a", 10, generated=12, waiting=False, computed=22)
    # predicted 10, produced 12 and still going: re-predicted from the >12 population (400)
    assert e.remaining_tokens(j) == pytest.approx(388)
    assert e.remaining_time(j) > e.remaining_time(job("b", 50, waiting=False, computed=10))


def test_preemption_choice_and_anti_thrashing_guard():
    e = est(policy="alise", preempt_ratio=4.0, min_run_steps=5, max_preemptions=2,
            max_wait_s=1e9)
    running_long = job("long", 1000, waiting=False, computed=10)
    running_long.run_start_step = 0
    waiting_short = job("short", 10)
    waiting_mid = job("mid", 400)
    assert e.should_preempt(running_long, waiting_short)
    assert not e.should_preempt(running_long, waiting_mid)  # not *much* shorter
    assert not e.can_preempt(running_long, now=0.0, step=3)  # ran too briefly
    assert e.can_preempt(running_long, now=0.0, step=5)
    running_long.preemptions = 2
    assert not e.can_preempt(running_long, now=0.0, step=50)  # preempted enough already
    assert not e.can_preempt(waiting_short, now=0.0, step=50)  # not running


def test_time_model_from_planner_profile(tmp_path):
    from vllm_esp.planner.cost_model import CostModel, Linear3, ProfileMeta

    cm = CostModel(ProfileMeta("m", "float32", 1, "cpu"), {1: Linear3(0.01, 1e-4, 1e-8)},
                   {1: Linear3(0.02, 1e-3, 1e-6)}, kv_bytes_per_token=1024,
                   migration_bandwidth=1e9)
    path = tmp_path / "p.json"
    cm.save(path)
    tm = ExecTimeModel.from_cost_model_file(str(path), batch_size=4)
    assert tm.prefill_s_per_token == pytest.approx(1e-4)
    assert tm.decode_s_per_token == pytest.approx(0.02 / 4 + 1e-3)
    assert tm.decode_s_per_context_token == pytest.approx(1e-6)


def test_preemption_only_when_the_saved_wait_exceeds_its_cost():
    # 1 token = 10 ms of decode, no context term; one step of resume overhead (10 ms)
    e = est(policy="alise", preempt_ratio=4.0, max_wait_s=1e9, decode_s_per_token=0.01,
            prefill_s_per_token=0.0, decode_s_per_context_token=0.0)
    victim = job("long", 1000, waiting=False, computed=10)  # 10 s left
    short = job("short", 5)  # 0.05 s of work
    assert e.preempt_overhead() == pytest.approx(0.01)
    # a slot frees in 2 s: saving 2 s of wait for 0.05 + 0.01 s of delay to the victim
    assert e.preemption_gain(victim, short, slot_wait=2.0, restore_s=0.0) == pytest.approx(1.94)
    assert e.worth_preempting(victim, short, slot_wait=2.0, restore_s=0.0)
    # a slot frees almost at once: waiting is cheaper than taking the victim's slot
    assert not e.worth_preempting(victim, short, slot_wait=0.05, restore_s=0.0)
    # an expensive restore (recomputing a long context) outweighs the saved wait
    assert not e.worth_preempting(victim, short, slot_wait=2.0, restore_s=3.0)
    # the ratio guard still applies: a mid-length job is not much shorter than the victim
    mid = job("mid", 400)
    assert e.preemption_gain(victim, mid, slot_wait=10.0, restore_s=0.0) > 0
    assert not e.worth_preempting(victim, mid, slot_wait=10.0, restore_s=0.0)
    # the saved wait is capped by the victim's own remainder (its slot frees then anyway)
    small_victim = job("v", 100, waiting=False, computed=10)  # 1 s left
    assert e.preemption_gain(small_victim, short, slot_wait=5.0, restore_s=0.0) == \
        pytest.approx(1.0 - 0.05 - 0.01)


def test_preempt_overhead_configurable_and_validated():
    e = est(policy="alise", preempt_overhead_s=0.5, max_wait_s=1e9, decode_s_per_token=0.01,
            prefill_s_per_token=0.0, decode_s_per_context_token=0.0)
    victim = job("long", 1000, waiting=False, computed=10)
    short = job("short", 5)
    assert not e.worth_preempting(victim, short, slot_wait=0.5, restore_s=0.0)
    assert e.worth_preempting(victim, short, slot_wait=0.6, restore_s=0.0)
    with pytest.raises(ValueError):
        SchedulingConfig(preempt_overhead_s=-1.0)
