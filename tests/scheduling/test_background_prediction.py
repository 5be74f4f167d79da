"""Issue 21 acceptance: a slow encoder (a stub that sleeps) does not lengthen engine steps.

The scheduler is vLLM's own (``AliseScheduler`` on the stock ``Scheduler``) driven without a
model (``testing.scheduler_harness``): every step is ``schedule`` + ``update_from_output``, the
part of an engine step where arrivals are predicted and finished requests are learned from. The
retrieval predictor's encoder is ``GatedEncoder``, which sleeps until the test opens a gate file
(up to 60 s). Before the fix, the first request to finish waited for the encoder (for its
embedding and for the predictor lock), so one step took as long as the encoder did.
"""

from __future__ import annotations

import time

import pytest

from vllm_esp.testing.scheduler_harness import fake_step, make_request, make_scheduler
from vllm_esp.testing.slow_encoder import GATE_ENV, MAX_ENV

GATED = "vllm_esp.testing.slow_encoder:GatedEncoder"
SLEEP_S = 60  # how long the stub sleeps while the gate is closed
STEP_LIMIT_S = 2.0  # any step that waited for it would take SLEEP_S


def _requests(prefix: str, n: int = 8):
    """Short (4 tokens) and long (30 tokens) answers to two prompt shapes."""
    return [make_request(f"{prefix}{i}", [20 + i % 2] * 8 + list(range(30, 40 + i)),
                         4 if i % 2 else 30) for i in range(n)]


def _run_until_finished(sched, n: int, arrivals=()) -> list[float]:
    """Step times (arrivals + schedule + update) until ``n`` requests finished; the arrivals
    come one per step, as they would from clients."""
    arrivals, times, done = list(arrivals), [], []
    while len(done) < n:
        seconds, finished = fake_step(sched, arrivals[:1])
        arrivals = arrivals[1:]
        times.append(seconds)
        done += finished
        assert len(times) < 1000, "requests did not finish"
    return times


@pytest.fixture
def gate(tmp_path, monkeypatch):
    path = tmp_path / "gate"
    monkeypatch.setenv(GATE_ENV, str(path))  # inherited by the prediction process
    monkeypatch.setenv(MAX_ENV, str(SLEEP_S))
    return path


def test_slow_encoder_does_not_lengthen_scheduler_steps(tiny_models, gate):
    sched = make_scheduler(tiny_models["llama"], {
        "policy": "alise", "predictor": "retrieval",
        "predictor_options": {"encoder": GATED, "min_similarity": 0.3}})
    try:
        assert sched.predictor.info["encoder"] == "gated-stub"
        times = _run_until_finished(sched, 8, _requests("a"))  # the encoder sleeps all along
        assert max(times) < STEP_LIMIT_S, f"a step waited for the encoder: {max(times):.2f} s"
        stats = sched.stats()
        # every request ran on its provisional estimate and finished before its prediction
        assert stats["scheduled_provisional"] == 8 and stats["prediction_late"] == 8
        assert sched.prediction_error.count == 0

        gate.write_text("open")
        deadline = time.monotonic() + SLEEP_S
        while sched.prediction_error.count < 8 and time.monotonic() < deadline:
            seconds, _ = fake_step(sched)  # nothing scheduled; still polls, never waits
            assert seconds < STEP_LIMIT_S
            time.sleep(0.02)
        assert sched.prediction_error.count == 8  # late predictions are scored on arrival
        assert sched.stats()["predictor_predicted"] == 8

        # learned in the child: a new request like a long one is predicted long
        fake_step(sched, [make_request("b0", [20] * 8 + list(range(30, 41)), 100)])
        deadline = time.monotonic() + SLEEP_S
        while sched._pending_predictions and time.monotonic() < deadline:
            fake_step(sched)
            time.sleep(0.02)
        assert not sched._pending_predictions
        assert 20 < sched.jobs["b0"].predicted_len <= 30  # the long neighbours' lengths
        _run_until_finished(sched, 1)
    finally:
        sched.shutdown()
    assert sched.predictor._proc.poll() is not None  # the child exits with the scheduler


def test_dead_prediction_process_keeps_the_scheduler_serving(tiny_models, gate):
    gate.write_text("open")
    sched = make_scheduler(tiny_models["llama"], {
        "policy": "alise", "predictor": "retrieval",
        "predictor_options": {"encoder": GATED, "provisional": "mean"}})
    try:
        sched.predictor._proc.kill()
        deadline = time.monotonic() + 30
        while sched.predictor.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sched.predictor.alive
        times = _run_until_finished(sched, 4, _requests("c", 4))
        assert max(times) < STEP_LIMIT_S
        assert sched.stats()["predictor_alive"] is False
        assert sched.prediction_error.count == 4  # provisional estimates are scored
    finally:
        sched.shutdown()


def test_bad_background_predictor_options_fail_at_start(tiny_models):
    with pytest.raises(ValueError, match="unknown encoder 'nope'"):
        make_scheduler(tiny_models["llama"], {"predictor": "retrieval",
                                              "predictor_options": {"encoder": "nope"}})
    with pytest.raises(ValueError, match="worker_priority"):
        make_scheduler(tiny_models["llama"], {"predictor": "retrieval",
                                              "predictor_options": {"worker_priority": 40}})
