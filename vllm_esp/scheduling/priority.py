"""Priority of a request = its estimated remaining execution time, with aging (no vLLM here).

ALISE orders work by how long each job still has to run (shortest first) to remove head-of-line
blocking, and bounds starvation with aging. The estimate is

    remaining_time = prefill(tokens not yet in the KV cache)
                   + predicted_remaining_tokens x decode_time_per_token(context)

and is re-evaluated every iteration from the request's progress: ``predict_remaining`` shrinks
the estimate as tokens are produced and re-predicts once a request outlives its prediction.

Aging: a waiting request's score is reduced by ``aging_rate`` seconds for every second it waited,
and a request that has waited ``max_wait`` in total is *starved*: starved requests go before all
others, oldest first. By default (``max_slowdown`` = K) the bound is per request, a bounded
slowdown: max(``min_max_wait_s``, K x the request's own predicted total run time), capped by
``max_wait_s`` if set. So a short job may overtake a long one during a burst, but no job waits
more than K times its own size (re-predicted as it runs). With ``max_slowdown`` None the bound
is the same for all: ``max_wait_s`` if configured, else a multiple of the running mean latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vllm_esp.predictor.base import LengthPredictor, PredictRequest
from vllm_esp.scheduling.config import SchedulingConfig


@dataclass(slots=True)
class JobState:
    """Scheduler-side view of one request, refreshed from the vLLM request every step."""

    req_id: str
    arrival: float  # s, wall clock (vLLM's Request.arrival_time)
    prompt_len: int  # tokens
    predicted_len: float  # tokens; total output length predicted at arrival
    predict_req: PredictRequest
    generated: int = 0  # output tokens produced so far
    computed: int = 0  # tokens whose KV is in the cache (0 after a recompute preemption)
    waiting: bool = True
    wait_since: float = 0.0  # s, when it last entered the waiting queue
    waited: float = 0.0  # s, total time spent waiting before the current wait
    run_start_step: int = -1  # scheduler step at which it last started running
    preemptions: int = 0  # length-based or memory preemptions so far
    swapped_tokens: int = 0  # tokens of KV parked in host memory (0 = none)
    swap_bytes: int = 0  # host bytes those tokens take (scheduler's accounting)

    def total_wait(self, now: float) -> float:
        return self.waited + (now - self.wait_since if self.waiting else 0.0)


@dataclass(frozen=True, slots=True)
class ExecTimeModel:
    """Seconds to prefill ``n`` tokens and to decode one token at a given context."""

    prefill_s_per_token: float = 2e-4
    decode_s_per_token: float = 2e-3
    decode_s_per_context_token: float = 1e-7

    @classmethod
    def from_config(cls, cfg: SchedulingConfig) -> "ExecTimeModel":
        if cfg.cost_profile:
            return cls.from_cost_model_file(cfg.cost_profile)
        return cls(cfg.prefill_s_per_token, cfg.decode_s_per_token,
                   cfg.decode_s_per_context_token)

    @classmethod
    def from_cost_model_file(cls, path: str, batch_size: int = 8) -> "ExecTimeModel":
        """From a planner CostModel profile (k=1): per-token costs at a typical batch size."""
        from vllm_esp.planner.cost_model import CostModel

        cm = CostModel.load(path)
        pre, dec = cm.prefill[1], cm.decode[1]
        return cls(prefill_s_per_token=max(pre.b, 0.0),
                   decode_s_per_token=max(dec.a / batch_size + dec.b, 1e-9),
                   decode_s_per_context_token=max(dec.c, 0.0))

    def prefill(self, tokens: float) -> float:
        return self.prefill_s_per_token * max(tokens, 0.0)

    def decode(self, tokens: float, context: float) -> float:
        """Decode ``tokens`` tokens starting at ``context``: mean context over the run."""
        if tokens <= 0:
            return 0.0
        mean_ctx = context + tokens / 2.0
        return tokens * (self.decode_s_per_token + self.decode_s_per_context_token * mean_ctx)


class PriorityEstimator:
    """Scores jobs for one scheduler. Lower score = served earlier."""

    def __init__(self, cfg: SchedulingConfig, predictor: LengthPredictor,
                 time_model: ExecTimeModel | None = None):
        self.cfg, self.predictor = cfg, predictor
        self.time_model = time_model or ExecTimeModel.from_config(cfg)
        self._latency_sum, self._latency_n = 0.0, 0

    # -- estimates ------------------------------------------------------------------------
    def remaining_tokens(self, job: JobState) -> float:
        return self.predictor.predict_remaining(job.predicted_len, job.generated)

    def remaining_time(self, job: JobState) -> float:
        context = job.prompt_len + job.generated
        to_prefill = context - job.computed if job.swapped_tokens == 0 else (
            context - job.swapped_tokens)
        return self.time_model.prefill(to_prefill) + self.time_model.decode(
            self.remaining_tokens(job), context)

    def recompute_time(self, tokens: int) -> float:
        return self.time_model.prefill(tokens)

    # -- aging ------------------------------------------------------------------------------
    def record_latency(self, seconds: float) -> None:
        self._latency_sum += max(seconds, 0.0)
        self._latency_n += 1

    def mean_latency(self) -> float | None:
        return self._latency_sum / self._latency_n if self._latency_n else None

    def max_wait(self) -> float:
        if self.cfg.max_wait_s is not None:
            return self.cfg.max_wait_s
        mean = self.mean_latency()
        if mean is None:
            # Until a request finished there is no scale; use the floor (conservative: aging
            # kicks in early rather than late).
            return self.cfg.min_max_wait_s
        return max(self.cfg.max_wait_factor * mean, self.cfg.min_max_wait_s)

    def service_time(self, job: JobState) -> float:
        """Predicted total run time: prefill of the prompt + decode of the whole predicted
        output (tokens produced so far + predicted remainder, so it grows on re-prediction)."""
        total = job.generated + self.remaining_tokens(job)
        return self.time_model.prefill(job.prompt_len) + self.time_model.decode(
            total, job.prompt_len)

    def wait_bound(self, job: JobState) -> float:
        """How long ``job`` may wait in total before it is starved."""
        k = self.cfg.max_slowdown
        if k is None:
            return self.max_wait()
        bound = max(self.cfg.min_max_wait_s, k * self.service_time(job))
        if self.cfg.max_wait_s is not None:
            bound = min(bound, self.cfg.max_wait_s)
        return bound

    def is_starved(self, job: JobState, now: float) -> bool:
        return self.cfg.policy == "alise" and job.total_wait(now) >= self.wait_bound(job)

    def key(self, job: JobState, now: float) -> tuple:
        """Sort key: (class, value, arrival, id). Class 0 = starved (FCFS among them)."""
        if self.cfg.policy == "fcfs":
            return (1, job.arrival, job.arrival, job.req_id)
        if self.is_starved(job, now):
            return (0, job.arrival, job.arrival, job.req_id)
        value = self.remaining_time(job)
        if self.cfg.policy == "alise" and job.waiting:
            value -= self.cfg.aging_rate * job.total_wait(now)
        elif self.cfg.policy == "alise":
            value -= self.cfg.aging_rate * job.waited
        return (1, value, job.arrival, job.req_id)

    # -- length-based preemption --------------------------------------------------------------
    def can_preempt(self, job: JobState, now: float, step: int) -> bool:
        """Anti-thrashing guard: protected jobs are never chosen as length-preemption victims."""
        if job.waiting or self.is_starved(job, now):
            return False
        if job.preemptions >= self.cfg.max_preemptions:
            return False
        return step - job.run_start_step >= self.cfg.min_run_steps

    def should_preempt(self, victim: JobState, candidate: JobState) -> bool:
        """Is the waiting ``candidate`` much shorter than the running ``victim``'s remainder?"""
        cand = self.remaining_time(candidate)
        return math.isfinite(cand) and self.remaining_time(victim) > self.cfg.preempt_ratio * cand

    def preempt_overhead(self) -> float:
        if self.cfg.preempt_overhead_s is not None:
            return self.cfg.preempt_overhead_s
        return self.time_model.decode(1, 0)  # about one extra engine step to resume

    def preemption_gain(self, victim: JobState, candidate: JobState, slot_wait: float,
                        restore_s: float) -> float:
        """Estimated change of the summed latency if ``candidate`` takes ``victim``'s slot now.

        Without preemption the candidate starts when the first running job ends (``slot_wait``
        from now). With it, the candidate saves that wait, and the victim is delayed by the
        candidate's remaining time (it used the victim's slot), by ``restore_s`` (swapping its
        KV out and back, or recomputing it) and by the resume overhead. Positive = worth it.
        (Exchange argument: on one slot, running C before V changes the sum by the difference
        of their times; across slots C only gains what it would have waited.)
        """
        cand = self.remaining_time(candidate)
        if not math.isfinite(cand) or not math.isfinite(slot_wait):
            return -math.inf
        saved = min(slot_wait, self.remaining_time(victim))
        return saved - cand - restore_s - self.preempt_overhead()

    def worth_preempting(self, victim: JobState, candidate: JobState, slot_wait: float,
                         restore_s: float) -> bool:
        """Both the ratio guard (much shorter) and a positive estimated gain."""
        return self.should_preempt(victim, candidate) and self.preemption_gain(
            victim, candidate, slot_wait, restore_s) > 0.0
