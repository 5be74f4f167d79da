"""ALISE-style length-aware scheduler for stock vLLM (one instance) and for ESP instances.

    LLM(model, scheduler_cls="vllm_esp.scheduling.AliseScheduler",
        additional_config={"esp": {"policy": "alise", "predictor": "online"}})

A subclass of vLLM's ``Scheduler`` that keeps the stock batching, chunked prefill, prefix caching
and KV accounting, and changes only *order* and *preemption*:

* every waiting request gets a predicted output length at arrival (``vllm_esp.predictor``; a
  slow predictor, retrieval, runs in a child process and the request is ordered by a provisional
  estimate until its prediction arrives: ``predictor.background``, no step waits for it); its
  priority is its estimated remaining execution time (``priority.PriorityEstimator``), refreshed
  every step from its progress, with aging that bounds any wait;
* the waiting queue is a ``ScoredRequestQueue`` and the running list is kept sorted the same way,
  so the stock memory-pressure preemption (which takes ``running[-1]``) evicts the job with the
  longest estimated remaining time;
* (alise) a running request is preempted for a waiting one that is ``preempt_ratio`` times
  shorter when the waiting one cannot start otherwise, guarded against thrashing;
* on preemption the KV is swapped to host memory through ``SwapConnector`` when that is cheaper
  than recomputing it (the connector must be configured as kv_transfer_config), else recomputed.

The constructor signature is the stock one, so the ESP scheduler can build one per instance.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict

from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from vllm_esp.config import ESPConfig
from vllm_esp.integration.spanning import views
from vllm_esp.predictor import PredictionErrorTracker, PredictRequest, make_predictor
from vllm_esp.predictor.background import BackgroundPredictor, runs_in_background
from vllm_esp.scheduling.config import SchedulingConfig
from vllm_esp.scheduling.priority import JobState, PriorityEstimator
from vllm_esp.scheduling.queue import ScoredRequestQueue
from vllm_esp.scheduling.swap_connector import SwapConnector

logger = logging.getLogger(__name__)

_LEARN_FROM = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)
_LATE_SCORES = 4096  # finished requests whose prediction is still to come, kept for the metric


class AliseScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Wall clock of waits, aging and latencies (same base as Request.arrival_time). A
        # benchmark may replace it with a simulated clock to remove CPU contention from the
        # comparison of policies.
        self.clock = time.time
        self.jobs: dict[str, JobState] = {}
        self.esp_stats: Counter = Counter()
        self.predictor = None
        self._now = self.clock()
        self._last_metrics = 0.0
        self._length_preempting = False
        group = self.kv_cache_config.kv_cache_groups[0]
        self._kv_bytes_per_block = group.kv_cache_spec.page_size_bytes * len(group.layer_names)
        self._swap_bytes = 0
        # Slow predictors (retrieval: a sentence encoder, 10-100 ms of CPU per prompt) run in a
        # child process (BackgroundPredictor); a request is ordered by the provisional
        # estimate until its prediction arrives. Requests still waiting for theirs:
        self._pending_predictions: set[str] = set()
        # finished before their prediction arrived: request id -> actual output length
        self._late_scores: OrderedDict[str, int] = OrderedDict()
        # moved to another instance before their prediction arrived: request id -> that
        # instance's scheduler (the prediction is handed on when it comes)
        self._moved: dict[str, AliseScheduler] = {}
        self.reconfigure(ESPConfig.from_dict(
            (self.vllm_config.additional_config or {}).get("esp")).scheduling)

    # ---------------------------------------------------------------- configuration -------
    def reconfigure(self, cfg: SchedulingConfig) -> None:
        """Install a policy and a fresh predictor. Only while idle (benchmarks switch policy)."""
        if self.jobs:
            raise RuntimeError("AliseScheduler.reconfigure needs an idle scheduler")
        self.esp = cfg
        self._close_predictor()
        if runs_in_background(cfg.predictor, cfg.predictor_options):
            self.predictor = BackgroundPredictor(cfg.predictor, cfg.predictor_options,
                                                 tokenizer=self._tokenizer_spec())
        else:
            self.predictor = make_predictor(cfg.predictor, **cfg.predictor_options)
        self._pending_predictions.clear()
        self._late_scores.clear()
        self._moved.clear()
        self.estimator = PriorityEstimator(cfg, self.predictor)
        self.prediction_error = PredictionErrorTracker()
        self.esp_stats.clear()
        if isinstance(self.connector, SwapConnector):
            self.connector.stats.update(swap_out=0, swap_in=0, dropped=0)
        if cfg.policy == "fcfs":
            self.waiting = create_request_queue(self.policy)  # exactly the stock order
        else:
            self.waiting = ScoredRequestQueue(self._key)
        if cfg.swap != "off" and not isinstance(self.connector, SwapConnector):
            logger.info("esp.swap=%s but the SwapConnector is not configured: preemption "
                        "recomputes", cfg.swap)

    def _close_predictor(self) -> None:
        if isinstance(self.predictor, BackgroundPredictor):
            self.predictor.close()

    def _tokenizer_spec(self) -> dict | None:
        """How the prediction process loads this model's tokenizer (it decodes the prompts
        there, off the step path); None without one (it then embeds the token ids)."""
        mc = self.vllm_config.model_config
        if mc is None or mc.skip_tokenizer_init or not mc.tokenizer:
            return None
        return {"name": str(mc.tokenizer), "tokenizer_mode": mc.tokenizer_mode,
                "revision": mc.tokenizer_revision, "trust_remote_code": mc.trust_remote_code}

    def shutdown(self) -> None:
        self._close_predictor()
        super().shutdown()

    def _key(self, request: Request) -> tuple:
        job = self.jobs.get(request.request_id)
        if job is None:  # not ours (cannot happen for requests added via add_request)
            return (1, float("inf"), request.arrival_time, request.request_id)
        return self.estimator.key(job, self._now)

    # ---------------------------------------------------------------- requests ------------
    def add_request(self, request: Request) -> None:
        if request.request_id not in self.requests:
            params = request.sampling_params
            preq = PredictRequest(
                prompt_token_ids=request.prompt_token_ids or [],
                extra_args=params.extra_args if params is not None else None,
                max_tokens=request.max_tokens,
            )
            predicted = self._predict(preq)  # provisional for a background predictor
            if isinstance(self.predictor, BackgroundPredictor) \
                    and self.predictor.submit(request.request_id, preq):
                self._pending_predictions.add(request.request_id)
            now = self.clock()
            self.jobs[request.request_id] = JobState(
                req_id=request.request_id, arrival=request.arrival_time,
                prompt_len=request.num_prompt_tokens, predicted_len=predicted,
                predict_req=preq, wait_since=now)
        super().add_request(request)

    def _predict(self, preq: PredictRequest) -> float:
        try:
            return self.predictor.predict(preq)
        except ValueError as e:  # a malformed client hint must not kill the engine
            logger.warning("length prediction failed (%s); using the mean length", e)
            return self.predictor.history.mean() or 128.0

    def _collect_predictions(self) -> None:
        """Install the predictions the background predictor has finished (never waits)."""
        for req_id, value in self.predictor.poll():
            owner = self._moved.pop(req_id, self)
            owner._install_prediction(req_id, value)

    def _install_prediction(self, req_id: str, value: float | None) -> None:
        self._pending_predictions.discard(req_id)
        if value is None:
            return  # rejected by the predictor: the provisional estimate stays
        job = self.jobs.get(req_id)
        if job is not None:
            job.predicted_len = value
        elif req_id in self._late_scores:  # finished first: score it now
            self.prediction_error.record(value, self._late_scores.pop(req_id))

    def _free_request(self, request: Request, delay_free_blocks: bool = False):
        job = self.jobs.pop(request.request_id, None)
        if job is not None:
            self._learn(job, request)
            self._release_swap(job)
        return super()._free_request(request, delay_free_blocks)

    def _learn(self, job: JobState, request: Request) -> None:
        """Score the prediction and teach the predictor. A background prediction still to come
        is scored when it arrives, and the child learns after predicting: nothing waits."""
        pending = request.request_id in self._pending_predictions
        self._pending_predictions.discard(request.request_id)
        background = isinstance(self.predictor, BackgroundPredictor)
        if request.status not in _LEARN_FROM:
            if background:
                self.predictor.forget(request.request_id)
            return
        out = request.num_output_tokens
        if pending:
            self.esp_stats["prediction_late"] += 1
            self._late_scores[request.request_id] = out
            while len(self._late_scores) > _LATE_SCORES:
                self._late_scores.popitem(last=False)
        else:
            self.prediction_error.record(job.predicted_len, out)
        if background:
            self.predictor.observe(job.predict_req, out, key=request.request_id)
        else:
            self.predictor.observe(job.predict_req, out)
        self.estimator.record_latency(self.clock() - request.arrival_time)

    # ---------------------------------------------------------------- scheduling ----------
    def _sync(self, job: JobState, request: Request) -> None:
        job.generated = request.num_output_tokens
        job.computed = request.num_computed_tokens
        if isinstance(self.connector, SwapConnector):
            job.swapped_tokens = self.connector.swapped_tokens(job.req_id)

    def schedule(self, *args, **kwargs):
        self._now = now = self.clock()
        if isinstance(self.predictor, BackgroundPredictor):
            self._collect_predictions()
        for req_id, job in self.jobs.items():
            request = self.requests.get(req_id)
            if request is not None:
                self._sync(job, request)
        if self.esp.policy != "fcfs":
            self.running.sort(key=self._key)  # running[-1] = first memory-preemption victim
            self.waiting.invalidate()
            if self.esp.policy == "alise":
                self._length_preempt(now)
        out = super().schedule(*args, **kwargs)
        for req_id, job in self.jobs.items():
            request = self.requests.get(req_id)
            if job.waiting and request is not None and request.status == RequestStatus.RUNNING:
                if job.run_start_step < 0 and req_id in self._pending_predictions:
                    self.esp_stats["scheduled_provisional"] += 1
                job.waiting = False
                job.waited += now - job.wait_since
                job.run_start_step = self.current_step
                self.esp_stats["max_wait_ms"] = max(self.esp_stats["max_wait_ms"],
                                                    int(job.waited * 1000))
            if job.swapped_tokens and isinstance(self.connector, SwapConnector) \
                    and not self.connector.swapped_tokens(req_id):
                self._release_swap(job)
        if isinstance(self.predictor, BackgroundPredictor):
            self.predictor.flush()  # sent while the model runs
        self._maybe_publish_metrics(now)
        return out

    def _fits(self, request: Request) -> bool:
        blocks = -(-(request.num_tokens + 1) // self.block_size)
        return blocks <= self.kv_cache_manager.block_pool.get_num_free_blocks()

    def _length_preempt(self, now: float) -> None:
        """Preempt long running jobs for much shorter waiting ones (at most N per step)."""
        for _ in range(self.esp.max_preemptions_per_step):
            if not self.waiting or not self.running:
                return
            head = self.waiting.peek_request()
            hjob = self.jobs.get(head.request_id)
            if hjob is None or head.status not in (RequestStatus.WAITING,
                                                    RequestStatus.PREEMPTED):
                return
            if len(self.running) < self.max_num_running_reqs and self._fits(head):
                return  # it will be admitted without taking anyone's place
            step = self.current_step + 1
            candidates = [r for r in self.running
                          if r.request_id in self.jobs
                          and self.estimator.can_preempt(self.jobs[r.request_id], now, step)]
            if not candidates:
                return
            victim = max(candidates,
                         key=lambda r: self.estimator.remaining_time(self.jobs[r.request_id]))
            # Without preemption the head starts when the first running job ends.
            slot_wait = min(self.estimator.remaining_time(self.jobs[r.request_id])
                            for r in self.running if r.request_id in self.jobs)
            _, restore_s = self._restore_plan(victim)
            if not self.estimator.worth_preempting(self.jobs[victim.request_id], hjob,
                                                   slot_wait, restore_s):
                self.esp_stats["preempt_declined"] += 1
                return
            self._length_preempting = True
            try:
                views.preempt(self, victim, now)
            finally:
                self._length_preempting = False

    # ---------------------------------------------------------------- preemption / swap ---
    def _swap_bytes_for(self, tokens: int) -> int:
        blocks = -(-tokens // self.block_size)
        raw = blocks * self._kv_bytes_per_block
        if self.esp.swap_quantize:
            return raw // 3  # int8 + fp32 scale per head_dim values, vs fp16/fp32 source
        return raw

    def _restore_plan(self, request: Request, count: bool = False) -> tuple[bool, float]:
        """(swap?, estimated seconds to bring the KV back) for preempting ``request`` now.

        Swap if it is allowed, fits the host budget and (``auto``) costs less than recomputing
        the computed tokens; the cost is of the chosen way.
        """
        cfg = self.esp
        tokens = request.num_computed_tokens
        recompute_s = self.estimator.recompute_time(tokens)
        if cfg.swap == "off" or tokens <= 0 or not isinstance(self.connector, SwapConnector) \
                or not self.may_swap(request):
            return False, recompute_s
        nbytes = self._swap_bytes_for(tokens)
        if self._swap_bytes + nbytes > cfg.swap_space_gib * 2**30:
            if count:
                self.esp_stats["swap_refused_full"] += 1
            return False, recompute_s
        swap_s = 2 * nbytes / (cfg.host_bandwidth_gbs * 1e9)  # out and back in
        if cfg.swap == "always" or swap_s < recompute_s:
            return True, swap_s
        return False, recompute_s

    def may_swap(self, request: Request) -> bool:
        """Whether this request's KV may go to host memory (the ESP scheduler refuses it for
        the local views of requests spread over instances: those are placed again)."""
        return True

    def _choose_swap(self, request: Request) -> bool:
        return self._restore_plan(request, count=True)[0]

    def _preempt_request(self, request: Request, timestamp: float,
                         drop_stale_output: bool = False) -> None:
        job = self.jobs.get(request.request_id)
        if job is not None and self._choose_swap(request):
            tokens = request.num_computed_tokens
            block_ids = self.kv_cache_manager.get_block_ids(request.request_id)[0]
            self.connector.request_swap_out(request, block_ids, tokens, self.esp.swap_quantize)
            job.swap_bytes = self._swap_bytes_for(tokens)
            self._swap_bytes += job.swap_bytes
            job.swapped_tokens = tokens
            self.esp_stats["swap_out"] += 1
        else:
            self.esp_stats["recompute"] += 1
        super()._preempt_request(request, timestamp, drop_stale_output)
        self.esp_stats["preempt_length" if self._length_preempting else "preempt_memory"] += 1
        if job is not None:
            job.waiting, job.wait_since = True, self.clock()
            job.preemptions += 1
            job.computed = 0

    def _release_swap(self, job: JobState) -> None:
        self._swap_bytes -= job.swap_bytes
        job.swap_bytes = 0
        job.swapped_tokens = 0

    # ---------------------------------------------------------------- metrics -------------
    def _maybe_publish_metrics(self, now: float) -> None:
        """(The prediction error reaches /metrics with the scheduler stats: make_stats.)"""
        self._last_metrics = now

    def prediction_stats(self) -> dict:
        """The length-prediction error for /metrics (``SchedulerStats.esp["prediction"]``)."""
        return {"predictor": self.predictor.name, **self.prediction_error.snapshot(),
                "pairs": list(self.prediction_error.pairs())}

    def make_stats(self, *args, **kwargs):
        stats = super().make_stats(*args, **kwargs)
        if stats is not None and self.prediction_error.count:
            prediction = self.prediction_stats()
            prediction.pop("pairs")
            stats.esp = {**(getattr(stats, "esp", None) or {}), "prediction": prediction}
        return stats

    def stats(self) -> dict:
        """Counters for tests, benchmarks and logs."""
        out = dict(self.esp_stats)
        out.update({f"prediction_{k}": v for k, v in self.prediction_error.snapshot().items()})
        out["swap_bytes"] = self._swap_bytes
        if isinstance(self.predictor, BackgroundPredictor):
            out.update({f"predictor_{k}": v for k, v in self.predictor.stats.items()})
            out["predictor_alive"] = self.predictor.alive
        if isinstance(self.connector, SwapConnector):
            out["swap_in"] = self.connector.stats["swap_in"]
        return out

    # ---------------------------------------------------------------- ESP placement -------
    def predicted_remaining(self, request_id: str) -> float | None:
        """Estimated seconds of work left for a request on this instance (its priority
        before aging); None when it is not one of ours. The ESP scheduler sums these to
        place requests by predicted work (``integration/length_aware.py``)."""
        job = self.jobs.get(request_id)
        return None if job is None else self.estimator.remaining_time(job)

    def release_waiting(self, request: Request) -> tuple | None:
        """A waiting request that never ran leaves for another instance (ESP re-routing,
        ``views.move_waiting``): its job (prediction, wait so far) goes with it, and so does
        a background prediction still being computed (handed on when it arrives)."""
        job = self.jobs.pop(request.request_id, None)
        if job is None:
            return None
        pending = request.request_id in self._pending_predictions
        self._pending_predictions.discard(request.request_id)
        return job, (self if pending else None)

    def adopt_waiting(self, request: Request, state: tuple) -> None:
        """The other end of ``release_waiting``: no new prediction, the wait keeps aging."""
        job, source = state
        self.jobs[request.request_id] = job
        if source is not None:
            source._moved[request.request_id] = self
            self._pending_predictions.add(request.request_id)
        Scheduler.add_request(self, request)
