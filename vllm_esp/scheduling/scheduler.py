"""ALISE-style length-aware scheduler for stock vLLM (one instance) and for ESP instances.

    LLM(model, scheduler_cls="vllm_esp.scheduling.AliseScheduler",
        additional_config={"esp": {"policy": "alise", "predictor": "online"}})

A subclass of vLLM's ``Scheduler`` that keeps the stock batching, chunked prefill, prefix caching
and KV accounting, and changes only *order* and *preemption*:

* every waiting request gets a predicted output length at arrival (``vllm_esp.predictor``); its
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
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from vllm_esp.config import ESPConfig
from vllm_esp.integration.spanning import views
from vllm_esp.predictor import PredictionErrorTracker, PredictRequest, make_predictor
from vllm_esp.scheduling.config import SchedulingConfig
from vllm_esp.scheduling.priority import JobState, PriorityEstimator
from vllm_esp.scheduling.queue import ScoredRequestQueue
from vllm_esp.scheduling.swap_connector import SwapConnector

logger = logging.getLogger(__name__)

_LEARN_FROM = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)


class AliseScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Wall clock of waits, aging and latencies (same base as Request.arrival_time). A
        # benchmark may replace it with a simulated clock to remove CPU contention from the
        # comparison of policies.
        self.clock = time.time
        self.jobs: dict[str, JobState] = {}
        self.esp_stats: Counter = Counter()
        self._tokenizer = None
        self._now = self.clock()
        self._last_metrics = 0.0
        self._length_preempting = False
        group = self.kv_cache_config.kv_cache_groups[0]
        self._kv_bytes_per_block = group.kv_cache_spec.page_size_bytes * len(group.layer_names)
        self._swap_bytes = 0
        # Slow predictors (a sentence encoder: ~30-150 ms per prompt on a busy CPU) run on a
        # background thread so add_request never stalls the engine loop; the request is
        # ordered by a provisional estimate until the prediction lands (usually 1-2 steps).
        self._predict_pool: ThreadPoolExecutor | None = None
        self._pending_predictions: dict[str, Future] = {}
        self._predictor_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._predict_queue: list[tuple[PredictRequest, Future]] = []
        self._predict_worker_busy = False
        self.reconfigure(ESPConfig.from_dict(
            (self.vllm_config.additional_config or {}).get("esp")).scheduling)

    # ---------------------------------------------------------------- configuration -------
    def reconfigure(self, cfg: SchedulingConfig) -> None:
        """Install a policy and a fresh predictor. Only while idle (benchmarks switch policy)."""
        if self.jobs:
            raise RuntimeError("AliseScheduler.reconfigure needs an idle scheduler")
        self.esp = cfg
        self.predictor = make_predictor(cfg.predictor, **cfg.predictor_options)
        if getattr(self.predictor, "is_slow", False) and self._predict_pool is None:
            self._predict_pool = ThreadPoolExecutor(1, thread_name_prefix="esp-predict")
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

    def _key(self, request: Request) -> tuple:
        job = self.jobs.get(request.request_id)
        if job is None:  # not ours (cannot happen for requests added via add_request)
            return (1, float("inf"), request.arrival_time, request.request_id)
        return self.estimator.key(job, self._now)

    # ---------------------------------------------------------------- requests ------------
    def _prompt_text(self, request: Request) -> str | None:
        if not getattr(self.predictor, "needs_text", False):
            return None
        if self._tokenizer is None:
            try:
                from vllm.tokenizers import cached_tokenizer_from_config

                self._tokenizer = cached_tokenizer_from_config(self.vllm_config.model_config)
            except Exception as e:  # no tokenizer: the predictor embeds token ids instead
                logger.warning("no tokenizer for the retrieval predictor (%s)", e)
                self._tokenizer = False
        if not self._tokenizer or request.prompt_token_ids is None:
            return None
        return self._tokenizer.decode(request.prompt_token_ids)

    def add_request(self, request: Request) -> None:
        if request.request_id not in self.requests:
            params = request.sampling_params
            preq = PredictRequest(
                prompt_token_ids=request.prompt_token_ids or [],
                prompt_text=self._prompt_text(request),
                extra_args=params.extra_args if params is not None else None,
                max_tokens=request.max_tokens,
            )
            if getattr(self.predictor, "is_slow", False):
                predicted = self.predictor.history.mean() or 128.0  # provisional
                future: Future = Future()
                self._pending_predictions[request.request_id] = future
                with self._queue_lock:
                    self._predict_queue.append((preq, future))
                    if not self._predict_worker_busy:
                        self._predict_worker_busy = True
                        self._predict_pool.submit(self._predict_worker)
            else:
                predicted = self._predict(preq)
            now = self.clock()
            self.jobs[request.request_id] = JobState(
                req_id=request.request_id, arrival=request.arrival_time,
                prompt_len=request.num_prompt_tokens, predicted_len=predicted,
                predict_req=preq, wait_since=now)
        super().add_request(request)

    def _predict(self, preq: PredictRequest) -> float:
        try:
            with self._predictor_lock:
                return self.predictor.predict(preq)
        except ValueError as e:  # a malformed client hint must not kill the engine
            logger.warning("length prediction failed (%s); using the mean length", e)
            return self.predictor.history.mean() or 128.0

    def _predict_worker(self) -> None:
        """Background thread: predict every queued request, in batches (one encoder call for
        all that arrived since the last one), until the queue is empty."""
        while True:
            with self._queue_lock:
                batch, self._predict_queue = self._predict_queue, []
                if not batch:
                    self._predict_worker_busy = False
                    return
            preqs = [p for p, _ in batch]
            try:
                with self._predictor_lock:
                    values = self.predictor.predict_many(preqs)
            except Exception as e:  # a bad request must not leave the others unresolved
                logger.warning("batched length prediction failed (%s); one by one", e)
                values = []
                for p in preqs:
                    try:
                        values.append(self._predict(p))
                    except Exception as e2:  # never leave a future unresolved
                        logger.warning("length prediction failed (%s); using the mean", e2)
                        values.append(self.predictor.history.mean() or 128.0)
            for (_, future), value in zip(batch, values):
                future.set_result(value)

    def _collect_predictions(self) -> None:
        for req_id in [r for r, f in self._pending_predictions.items() if f.done()]:
            future = self._pending_predictions.pop(req_id)
            job = self.jobs.get(req_id)
            if job is not None:
                job.predicted_len = future.result()

    def _free_request(self, request: Request, delay_free_blocks: bool = False):
        job = self.jobs.pop(request.request_id, None)
        future = self._pending_predictions.pop(request.request_id, None)
        if job is not None:
            if future is not None:
                job.predicted_len = future.result()  # score the real prediction
            if request.status in _LEARN_FROM:
                out = request.num_output_tokens
                self.prediction_error.record(job.predicted_len, out)
                with self._predictor_lock:
                    self.predictor.observe(job.predict_req, out)
                self.estimator.record_latency(self.clock() - request.arrival_time)
            self._release_swap(job)
        return super()._free_request(request, delay_free_blocks)

    # ---------------------------------------------------------------- scheduling ----------
    def _sync(self, job: JobState, request: Request) -> None:
        job.generated = request.num_output_tokens
        job.computed = request.num_computed_tokens
        if isinstance(self.connector, SwapConnector):
            job.swapped_tokens = self.connector.swapped_tokens(job.req_id)

    def schedule(self, *args, **kwargs):
        self._now = now = self.clock()
        if self._pending_predictions:
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
                job.waiting = False
                job.waited += now - job.wait_since
                job.run_start_step = self.current_step
                self.esp_stats["max_wait_ms"] = max(self.esp_stats["max_wait_ms"],
                                                    int(job.waited * 1000))
            if job.swapped_tokens and isinstance(self.connector, SwapConnector) \
                    and not self.connector.swapped_tokens(req_id):
                self._release_swap(job)
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
        ``views.move_waiting``): its job (prediction, wait so far) and any prediction still
        being computed go with it."""
        job = self.jobs.pop(request.request_id, None)
        if job is None:
            return None
        return job, self._pending_predictions.pop(request.request_id, None)

    def adopt_waiting(self, request: Request, state: tuple) -> None:
        """The other end of ``release_waiting``: no new prediction, the wait keeps aging."""
        job, future = state
        self.jobs[request.request_id] = job
        if future is not None:
            self._pending_predictions[request.request_id] = future
        Scheduler.add_request(self, request)
