"""ESPScheduler: vLLM's scheduler interface over N instances and one distributed KV pool.

Every instance runs a vLLM ``Scheduler`` (or a subclass chosen by ``--esp-policy``) over its
own block pool, so admission, chunked prefill, prefix caching, recompute preemption, stop
handling and output processing stay vLLM's code. The ESP scheduler dispatches each new request
to an instance (with a cost profile, the global manager's batching step plans each step's new
requests together: which share a ring prefill, which go where), gathers the per-instance
outputs into one step for the executor, routes the results back, and aggregates stats. A
request whose prompt does not fit one instance, or whose decode outgrows its instance while
others have free blocks, is spread over several instances by the ``SpanManager``
(contiguous chunks; see ``spanning.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from vllm.logger import init_logger
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.utils.import_utils import resolve_obj_by_qualname
from vllm.v1.core.sched.interface import PauseState, SchedulerInterface
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
from vllm.v1.metrics.stats import SchedulerStats
from vllm.v1.request import Request, RequestStatus

from vllm_esp import envs, qualnames
from vllm_esp.config import ESPConfig
from vllm_esp.integration.admission import Admission
from vllm_esp.integration.capacity import pool_summary
from vllm_esp.integration.arrivals import ArrivalsMixin
from vllm_esp.integration.elastic import ElasticDecodeMixin
from vllm_esp.integration.length_aware import LengthAwareMixin
from vllm_esp.integration.spanning import views
from vllm_esp.integration.stats import ESPStats, attention_row_bytes, merge_scheduler_stats
from vllm_esp.planner.prefill_groups import PrefillPlanner, load_profile
from vllm_esp.integration import instance_health, recovery
from vllm_esp.integration.kv_pool import DistributedKVPool
from vllm_esp.integration.span_support import span_blockers
from vllm_esp.integration.spanning import SpanManager
from vllm_esp.integration.outputs import (
    ESPModelRunnerOutput,
    LOST_STEP,
    NOT_DONE,
    ESPSchedulerOutput,
    InstanceSchedulerOutput,
    merge_engine_core_outputs,
    merge_scheduler_outputs,
)
from vllm_esp.ops.plan import ESPStepPlan

logger = init_logger(__name__)

POLICY_SCHEDULERS = qualnames.POLICY_SCHEDULERS  # --esp-policy -> each instance's scheduler


def instance_scheduler_class(esp: ESPConfig) -> type[Scheduler]:
    qualname = esp.instance_scheduler or POLICY_SCHEDULERS.get(esp.policy)
    if qualname is None:
        raise ValueError(f"--esp-policy {esp.policy} is not available in this build")
    cls = resolve_obj_by_qualname(qualname)
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"per-instance scheduler {qualname} must subclass vLLM's Scheduler")
    return cls


class ESPScheduler(ArrivalsMixin, ElasticDecodeMixin, LengthAwareMixin, SchedulerInterface):
    def __init__(
        self,
        vllm_config,
        kv_cache_config,
        structured_output_manager,
        block_size: int,
        hash_block_size: int | None = None,
        mm_registry=MULTIMODAL_REGISTRY,
        include_finished_set: bool = False,
        log_stats: bool = False,
    ) -> None:
        self.vllm_config = vllm_config
        self.esp = ESPConfig.from_vllm_config(vllm_config)
        self.log_stats = log_stats
        cls = instance_scheduler_class(self.esp)
        self.instances: list[Scheduler] = [
            cls(
                vllm_config=vllm_config,
                kv_cache_config=copy.deepcopy(kv_cache_config),
                structured_output_manager=structured_output_manager,
                block_size=block_size,
                hash_block_size=hash_block_size,
                mm_registry=mm_registry,
                include_finished_set=include_finished_set,
                log_stats=log_stats,
            )
            for _ in range(self.esp.instances)
        ]
        if self.esp.instances > 1:
            # the ESP workers run vLLM's V1 runner (ESPExecutor); a scheduler in V2 mode would
            # send a resumed request as new request data, which V1 reads as a streaming update
            for s in self.instances:
                views.set_runner_mode_v1(s)
        self.pool = DistributedKVPool(self.instances, block_size)
        self.health = instance_health.for_config(vllm_config, self.esp.instances)
        # request id -> tokens it produced before it was placed again on another instance
        # (its new runner needs them: sent with the plan when it is scheduled there)
        self.resume_outputs: dict[str, list[int]] = {}
        # instance -> the output of the step it is running (its result comes with a later
        # tick: instances and groups step on their own clocks unless esp.lockstep)
        self.in_flight: dict[int, SchedulerOutput] = {}
        logger.info("%s", pool_summary(
            [self.pool.total_blocks(i) * block_size for i in range(self.esp.instances)],
            self.esp.tp, vllm_config.model_config.max_model_len))
        # the global manager's batching step over each step's new requests (cost profile)
        self.prefill_planner = PrefillPlanner(load_profile(self.esp.profile), block_size) \
            if self.esp.profile and self.esp.instances > 1 else None
        # the global manager's dispatching step (--esp-admission manager)
        self.admission = Admission(self.prefill_planner.cost, block_size) \
            if self.prefill_planner is not None and self.esp.admission == "manager" else None
        # requests larger than one instance's pool: contiguous chunks over instances
        blockers = span_blockers(vllm_config, kv_cache_config)
        if blockers and self.esp.instances > 1:
            logger.warning("ESP: requests are served unspread (each whole on one instance): "
                           "span attention does not implement %s", ", ".join(blockers))
        self.stats = ESPStats(self.esp.instances, row_bytes=attention_row_bytes(vllm_config))
        self.spans = SpanManager(self.instances, self.pool, block_size, self.stats,
                                 parallel_prefill=self.esp.parallel_prefill,
                                 ring_prefill=self.esp.ring_prefill,
                                 batch_rings=self.esp.batch_rings, enabled=not blockers)
        self.spans.busy = self.in_flight  # a live view of the busy instances, never stale
        self._init_length_aware()
        # spanning requests waiting for free blocks (admitted in order as pools free up), and
        # requests that cannot fit even in idle pools (finished with an error next step)
        self.pending_spans: list[Request] = []
        self.arrivals: list[Request] = []  # new requests the manager plans at the next step
        self.rejected: list[Request] = []
        # only the SwapConnector is accepted (executor check); each instance's scheduler has
        # its own, so the engine core sees none (no handshake, no transfer params)
        self.connector = None
        for s in self.instances:
            if hasattr(s, "may_swap"):  # length-aware instances: spread requests recompute
                s.may_swap = self._may_swap
        self.ec_connector = None
        # EngineCore reads the KV manager of "the" scheduler for attention block sizes.
        self.kv_cache_manager = self.instances[0].kv_cache_manager
        self._step = 0
        self._placed_again: set[str] = set()  # preempted spanning requests waiting to re-place

    # ---- requests in and out ----------------------------------------------------------
    def add_request(self, request: Request) -> None:
        instance = self.pool.instance_of.get(request.request_id)
        try:
            span = instance is None and self.esp.instances > 1 and self.spans.needs_span(request)
        except ValueError as e:  # a bad per-request ESP option: fail this request only
            logger.error("request %s: %s", request.request_id, e)
            self.rejected.append(request)
            return
        if span:
            if self._never_fits(request):
                logger.error("request %s (%d tokens + %d new) cannot fit the ESP pools "
                             "(%d instances); finishing it with an error", request.request_id,
                             request.num_tokens, request.max_tokens, self.pool.num_instances)
                self.rejected.append(request)
            else:
                self.pending_spans.append(request)
                self._admit_spans()
            return
        if instance is not None:  # a streaming-input continuation
            self.instances[instance].add_request(request)
        elif self.prefill_planner is not None:
            self.arrivals.append(request)  # planned with this step's other arrivals
        else:
            self._dispatch(request)

    def _may_swap(self, request: Request) -> bool:
        return request.request_id not in self.spans.view_of


    def finish_requests(self, request_ids: str | Iterable[str] | None,
                        finished_status: RequestStatus) -> list[Request]:
        if request_ids is None:
            ids = None
        else:
            ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        span_ids = list(self.spans.spans) if ids is None else [
            rid for rid in ids if self.spans.is_spanning(rid)]
        # spans first: their shadow views are freed on every holder instance
        finished = [r for rid in span_ids for r in self.spans.abort(rid, finished_status)]
        finished += self._take_unplaced(None if ids is None else set(ids), finished_status)
        if ids is None:
            by_instance: dict[int, list[str] | None] = {i: None for i in range(len(self.instances))}
        else:
            by_instance = {}
            for rid in ids:
                if rid not in span_ids and (i := self.pool.instance_of.get(rid)) is not None:
                    by_instance.setdefault(i, []).append(rid)
        for i, rids in by_instance.items():
            finished += self.instances[i].finish_requests(rids, finished_status)
        for r in finished:
            self.pool.forget(r.request_id)
        return finished

    # ---- the step --------------------------------------------------------------------
    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        for dead in self.health.take_new_deaths():
            logger.error("ESP: instance %d is gone; its requests are placed again on the "
                         "%d live instances", dead, self.health.num_alive)
            self.rejected.extend(recovery.evacuate(self, dead))
        self._work = None  # predicted work per instance is read afresh each step
        self._admit_spans()
        if self.arrivals:
            self._plan_arrivals()
        if self.length_aware:
            self._reroute_waiting()
        if len(self.instances) > 1:
            self.spans.start_next_chunks()
            self._scale_up()
            self._relieve_masters()
        runs = self._schedulable()
        outs = [s.schedule(throttle_prefills) if i in runs else SchedulerOutput.make_empty()
                for i, s in enumerate(self.instances)]
        for i, out in enumerate(outs):
            if out.preempted_req_ids:
                self.stats.preemptions[i] += len(out.preempted_req_ids)
                self._place_preempted_spans_again(out.preempted_req_ids)
        plan = self.spans.build_plan(outs) if self.spans.spans else None
        plan = self._resume_elsewhere(outs, plan)
        # every instance's workers get the plan with their step (read by the ESP runner)
        outs = [InstanceSchedulerOutput.of(out, plan) for out in outs]
        if plan is not None:
            self.stats.count_plan_bytes(plan)
        launch = [i in runs and _has_work(out, plan, i) for i, out in enumerate(outs)]
        grammars = [self.instances[i].get_grammar_bitmask(out) if go else None
                    for i, (out, go) in enumerate(zip(outs, launch))]
        for i, go in enumerate(launch):
            if go:
                self.in_flight[i] = outs[i]
        merged = merge_scheduler_outputs(outs)
        merged.launch, merged.grammars = launch, grammars
        if envs.VLLM_ESP_DEBUG_PLAN:
            logger.info("ESP step %d plan: %s spans: %s", self._step, [
                {"instance": i, "tokens": o.total_num_scheduled_tokens,
                 "reqs": len(o.num_scheduled_tokens)} for i, o in enumerate(outs)],
                [(s.req_id, s.instance, s.num_query_tokens, [p.instance for p in s.peers])
                 for s in (plan.spans if plan else [])])
        self._step += 1
        return merged


    def _schedulable(self) -> set[int]:
        """Instances that start a step now: alive, not running one, and (when spread
        requests link them to others) their whole group is free too."""
        ready = {i for i in range(len(self.instances))
                 if self.health.is_alive(i) and i not in self.in_flight}
        runs = set(ready)
        for group in self.spans.groups():
            if not group <= ready:
                runs -= group
        return runs

    def _resume_elsewhere(self, outs, plan: ESPStepPlan | None) -> ESPStepPlan | None:
        """Requests placed again on another instance (their first one died) that start there
        this step: their new runner gets the tokens they produced so far with the plan."""
        if not self.resume_outputs:
            return plan
        for out in outs:
            for new in out.scheduled_new_reqs:
                tokens = self.resume_outputs.pop(new.req_id, None)
                if tokens is not None:
                    plan = plan or ESPStepPlan()
                    plan.resume_outputs[new.req_id] = tokens
        return plan


    def get_grammar_bitmask(self, scheduler_output: ESPSchedulerOutput):
        """None: each instance's bitmask was taken when its step was scheduled (an instance
        samples as soon as its own step is done: ``ESPSchedulerOutput.grammars``)."""
        return None

    def update_from_output(self, scheduler_output: ESPSchedulerOutput,
                           model_runner_output: ESPModelRunnerOutput) -> dict[int, EngineCoreOutputs]:
        merged: dict[int, EngineCoreOutputs] = {}
        stats: list[SchedulerStats] = []
        for i, out in enumerate(model_runner_output.per_instance):
            if out is NOT_DONE:
                continue  # its step is still running: its output comes with a later tick
            so = self.in_flight.pop(i, None)
            if so is None:
                continue
            if out is LOST_STEP:  # the instance died, or a peer died during its step
                if self.health.is_alive(i):
                    recovery.rollback_lost_step(self, i, so)
                continue
            for client, eco in self.instances[i].update_from_output(so, out).items():
                if eco.scheduler_stats is not None:
                    stats.append(eco.scheduler_stats)
                    eco.scheduler_stats = None
                if self.spans.spans:
                    self.spans.filter_outputs(eco)
                merge_engine_core_outputs(merged, client, eco)
        for eco in merged.values():
            for o in eco.outputs:
                if o.finish_reason is not None:
                    self.stats.decode_instances[self.spans.instances_of(o.request_id)] += 1
                    self.pool.forget(o.request_id)
                    self.spans.release(o.request_id)
        self.spans.advance(frozenset(self.in_flight))
        for request in self.rejected:
            request.status = RequestStatus.FINISHED_ERROR
            merged.setdefault(request.client_index, EngineCoreOutputs()).outputs.append(
                EngineCoreOutput(request_id=request.request_id, new_token_ids=[],
                                 finish_reason=request.get_finished_reason()))
        self.rejected.clear()
        if self.log_stats:
            eco = next(iter(merged.values()), None)
            if eco is None:
                merged[0] = eco = EngineCoreOutputs()
            eco.scheduler_stats = self._stats_for_vllm(stats)
        return merged

    def update_draft_token_ids(self, draft_token_ids) -> None:
        raise NotImplementedError("speculative decoding is not supported with --executor esp")

    def update_draft_token_ids_in_output(self, draft_token_ids, scheduler_output) -> None:
        raise NotImplementedError("speculative decoding is not supported with --executor esp")

    # ---- state queries ---------------------------------------------------------------
    def get_num_unfinished_requests(self) -> int:
        unplaced = len(self.arrivals) + len(self.pending_spans) + len(self.rejected)
        return unplaced + sum(s.get_num_unfinished_requests() for s in self.instances)

    def has_finished_requests(self) -> bool:
        return any(s.has_finished_requests() for s in self.instances)

    def has_requests(self) -> bool:
        return bool(self.arrivals or self.pending_spans or self.rejected or self.in_flight) \
            or any(s.has_requests() for s in self.instances)

    def get_request_counts(self) -> tuple[int, int]:
        counts = [s.get_request_counts() for s in self.instances]
        waiting = sum(c[1] for c in counts) + len(self.arrivals) + len(self.pending_spans) \
            + len(self.rejected)
        return sum(c[0] for c in counts), waiting

    def get_kv_cache_usage(self) -> float:
        return self.pool.aggregate_usage()

    @property
    def pause_state(self) -> PauseState:
        return self.instances[0].pause_state

    def set_pause_state(self, pause_state: PauseState) -> None:
        for s in self.instances:
            s.set_pause_state(pause_state)

    def reset_prefix_cache(self, reset_running_requests: bool = False,
                           reset_connector: bool = False) -> bool:
        return all([s.reset_prefix_cache(reset_running_requests, reset_connector)
                    for s in self.instances])

    def reset_encoder_cache(self) -> None:
        for s in self.instances:
            s.reset_encoder_cache()

    def get_kv_connector(self):
        return None

    def get_ec_connector(self):
        return None

    def get_kv_event_publisher_config(self):
        return self.instances[0].get_kv_event_publisher_config()

    def shutdown(self) -> None:
        for s in self.instances:
            s.shutdown()

    # ---- stats -----------------------------------------------------------------------
    def make_stats(self) -> SchedulerStats | None:
        if not self.log_stats:
            return None
        return self._stats_for_vllm([s.make_stats() for s in self.instances])

    def esp_stats(self) -> dict:
        """Per-instance numbers and pool-wide counters for /metrics (``stats.ESPStats``)."""
        return self.stats.snapshot(self.pool.usages(),
                                   [s.get_request_counts() for s in self.instances],
                                   self.health.num_alive, self._prediction_stats())

    def _stats_for_vllm(self, stats: list[SchedulerStats | None]) -> SchedulerStats:
        running, waiting = self.get_request_counts()
        out = merge_scheduler_stats(stats, running, waiting, self.get_kv_cache_usage())
        out.esp = self.esp_stats()  # field added by vllm_esp_patches.scheduler_stats_field
        return out

    def _prediction_stats(self) -> dict:
        """Length-prediction error over all instances (length-aware policies only)."""
        found = [s.prediction_stats() for s in self.instances if hasattr(s, "prediction_stats")]
        if not found or not sum(f["count"] for f in found):
            return {}
        from vllm_esp.predictor.metrics import PredictionErrorTracker

        union = PredictionErrorTracker(window=max(1, sum(len(f["pairs"]) for f in found)))
        for f in found:
            for predicted, actual in f["pairs"]:
                union.record(predicted, int(actual))
        return {"prediction": {"predictor": found[0]["predictor"], **union.snapshot()}}


def _has_work(out: SchedulerOutput, plan, instance: int) -> bool:
    """Does this instance's step need its workers (tokens to compute, requests to drop from
    its runner, or chunks to serve to peers)?"""
    return bool(out.total_num_scheduled_tokens or out.finished_req_ids or out.preempted_req_ids
                or out.free_encoder_mm_hashes or out.kv_connector_metadata is not None
                or (plan is not None and plan.involves(instance)))
