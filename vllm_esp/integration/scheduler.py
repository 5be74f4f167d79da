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
import time
from collections import Counter
from collections.abc import Iterable

from vllm.logger import init_logger
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.utils.import_utils import resolve_obj_by_qualname
from vllm.v1.core.sched.interface import PauseState, SchedulerInterface
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats
from vllm.v1.request import Request, RequestStatus

from vllm_esp import envs
from vllm_esp.config import ESPConfig
from vllm_esp.integration.admission import Admission
from vllm_esp.integration.capacity import pool_summary
from vllm_esp.integration.elastic_prefill import (
    MAX_REQUESTS_PER_STEP,
    PrefillPlanner,
    load_profile,
)
from vllm_esp.integration import instance_health, recovery
from vllm_esp.integration.kv_pool import DistributedKVPool
from vllm_esp.integration.span_support import request_blockers, span_blockers
from vllm_esp.integration.spanning import SpanManager
from vllm_esp.integration.outputs import (
    ESPModelRunnerOutput,
    LOST_STEP,
    NOT_DONE,
    ESPSchedulerOutput,
    InstanceSchedulerOutput,
    merge_grammar_outputs,
    merge_scheduler_outputs,
)
from vllm_esp.ops.plan import ESPStepPlan
from vllm_esp.planner.decode_plan import relieve_master

logger = init_logger(__name__)

# --esp-policy -> scheduler class run inside each instance
POLICY_SCHEDULERS = {
    "fcfs": "vllm.v1.core.sched.scheduler.Scheduler",
    "sjf": "vllm_esp.scheduling.AliseScheduler",
    "alise": "vllm_esp.scheduling.AliseScheduler",
}


def instance_scheduler_class(esp: ESPConfig) -> type[Scheduler]:
    qualname = esp.instance_scheduler or POLICY_SCHEDULERS.get(esp.policy)
    if qualname is None:
        raise ValueError(f"--esp-policy {esp.policy} is not available in this build")
    cls = resolve_obj_by_qualname(qualname)
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise TypeError(f"per-instance scheduler {qualname} must subclass vLLM's Scheduler")
    return cls


class ESPScheduler(SchedulerInterface):
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
                s.use_v2_model_runner = False
        self.pool = DistributedKVPool(self.instances, block_size)
        self.health = instance_health.for_config(vllm_config, self.esp.instances)
        recovery.check_recovery_internals(self.instances[0])
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
        self.spans = SpanManager(self.instances, self.pool, block_size,
                                 parallel_prefill=self.esp.parallel_prefill,
                                 ring_prefill=self.esp.ring_prefill,
                                 batch_rings=self.esp.batch_rings, enabled=not blockers)
        self.spans.busy = self.in_flight  # a live view of the busy instances, never stale
        # spanning requests waiting for free blocks (admitted in order as pools free up), and
        # requests that cannot fit even in idle pools (finished with an error next step)
        self.pending_spans: list[Request] = []
        self.arrivals: list[Request] = []  # new requests the manager plans at the next step
        self.rejected: list[Request] = []
        self.planned_prefills: Counter[int] = Counter()  # manager's choice: instances -> reqs
        self.num_preemptions = [0] * self.esp.instances  # cumulative, per instance
        self.num_dispatched = [0] * self.esp.instances  # requests sent to each instance
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
        self.decode_instances: Counter[int] = Counter()  # instances holding a finished request
        self.esp_bytes = [0] * self.esp.instances  # span-attention bytes sent, per instance
        self._placed_again: set[str] = set()  # preempted spanning requests waiting to re-place
        self._layer_bytes = _attention_row_bytes(vllm_config)

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

    def _plan_arrivals(self) -> None:
        """The global manager's batching step over the requests that arrived since the last
        step (``PrefillPlanner.plan``): a group on one instance is dispatched there, a group
        on k > 1 instances is prefilled by one ring over them. Rings are set up first, so
        their chunks are queued ahead of plain requests; plain requests keep their arrival
        order on each instance (vLLM's FCFS)."""
        batch = self._admit_arrivals()
        if not self.spans.enabled:
            batch, whole = [], batch
        else:
            whole = [r for r in batch if request_blockers(r)]  # never in a ring: one instance
            batch = [r for r in batch if not request_blockers(r)]
        for r in whole:
            self._dispatch(r)
        if not batch:
            return
        spare = self.spans.blocks_for_parallel_prefill()
        if len(spare) < 2:  # nothing to plan over: most headroom, as without a profile
            groups, left = [], list(range(len(batch)))
        else:
            groups, left = self.prefill_planner.plan([r.num_tokens for r in batch],
                                                     list(spare.values()))
        plain: dict[int, list[int] | None] = {r: None for r in left}
        ids = list(spare)
        for g in groups:
            instances = [ids[i] for i in g.instances]
            self.planned_prefills[len(instances)] += len(g.prompts)
            if len(instances) > 1:
                ringless = self._prefill_together([batch[r] for r in g.prompts], instances)
                plain.update({r: instances for r in g.prompts if batch[r] in ringless})
            else:
                plain.update({r: instances for r in g.prompts})
        if left:
            self.planned_prefills[1] += len(left)
        for r in sorted(plain):
            self._dispatch(batch[r], plain[r])

    def _admit_arrivals(self) -> list[Request]:
        """The new requests that start this step (taken off ``arrivals``): the first ones,
        or those the manager's dispatching rules admit (the rest keep waiting)."""
        if self.admission is None:
            batch = self.arrivals[:MAX_REQUESTS_PER_STEP]
            del self.arrivals[:MAX_REQUESTS_PER_STEP]
            return batch
        n = self.pool.num_instances
        spare = {i: max(0, self.spans.spare_blocks(i)) for i in range(n)}
        capacity = sum(self.pool.total_blocks(i) for i in range(n))
        batch, rejected = self.admission.admit(self.arrivals, self._live_requests(), spare,
                                               capacity, time.time())
        for r in rejected:
            logger.error("request %s (%d tokens) can never fit the ESP pools; finishing it "
                         "with an error", r.request_id, r.num_tokens)
        taken = {r.request_id for r in batch + rejected}
        self.arrivals = [r for r in self.arrivals if r.request_id not in taken]
        self.rejected.extend(rejected)
        return batch

    def _live_requests(self) -> list[Request]:
        """Requests admitted and not finished (each once: not the spans' shadow views)."""
        live = [r for s in self.instances for r in s.requests.values()
                if not self.spans.is_shadow(r.request_id)]
        return live + self.pending_spans

    def _prefill_together(self, requests: list[Request], instances: list[int]) -> list[Request]:
        """One ring over ``instances`` prefills ``requests``, each keeping its KV on the
        ring's master; the longest opens the ring, the others join it. Returns those that
        cannot take part (too short for a chunk per instance, no room on the master)."""
        ring: tuple[int, ...] | None = None
        ringless = []
        for request in sorted(requests, key=lambda r: -r.num_tokens):
            rid = request.request_id
            self.spans.planned_prefill[rid] = len(instances)
            self.spans.planned_instances[rid] = instances
            if ring is not None:
                self.spans.rings_to_join[rid] = [ring]
            master = self.spans.add(request)
            if master is None:
                ringless.append(request)
                continue
            self._assign(request, master)
            span = self.spans.spans[rid]
            if ring is None and span.parallel:
                ring = tuple(span.holders)
        return ringless

    def _dispatch(self, request: Request, among: list[int] | None = None) -> None:
        """A request on one instance: the pool's choice (most headroom), ``among`` these."""
        instance = self.pool.choose_instance(request, among)
        self._assign(request, instance)
        self.spans.prefill_instances[1] += 1
        self.instances[instance].add_request(request)

    def _assign(self, request: Request, instance: int) -> None:
        """Record where the request runs; a request placed again after a preemption was
        dispatched once already."""
        self.pool.assign(request.request_id, instance)
        if request.request_id in self._placed_again:
            self._placed_again.discard(request.request_id)
        else:
            self.num_dispatched[instance] += 1

    def _never_fits(self, request: Request) -> bool:
        """Even with every pool idle, the whole request must fit the sum of the pools."""
        return request.num_tokens + request.max_tokens > self.pool_capacity_tokens()

    def pool_capacity_tokens(self) -> int:
        return sum(self.pool.total_blocks(i) for i in range(self.pool.num_instances)) \
            * self.pool.block_size

    def _admit_spans(self) -> None:
        """Place waiting spanning requests, oldest first, while the pools have room."""
        while self.pending_spans:
            request = self.pending_spans[0]
            try:
                instance = self.spans.add(request)
            except ValueError:  # not enough free blocks now: wait for requests to finish
                return
            self.pending_spans.pop(0)
            if instance is None:  # a parallel prefill was only asked for: run it plainly
                self._dispatch(request)
                continue
            self._assign(request, instance)

    def _take_unplaced(self, request_ids, status: RequestStatus) -> list[Request]:
        """Finish requests the instances never saw (new arrivals, pending or rejected spans)."""
        taken = []
        for queue in (self.arrivals, self.pending_spans, self.rejected):
            keep = []
            for r in queue:
                if request_ids is None or r.request_id in request_ids:
                    r.status = status
                    self._placed_again.discard(r.request_id)
                    taken.append(r)
                else:
                    keep.append(r)
            queue[:] = keep
        return taken

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
        self._admit_spans()
        if self.arrivals:
            self._plan_arrivals()
        if len(self.instances) > 1:
            self.spans.start_next_chunks()
            self._scale_up()
            self._relieve_masters()
        runs = self._schedulable()
        outs = [s.schedule(throttle_prefills) if i in runs else SchedulerOutput.make_empty()
                for i, s in enumerate(self.instances)]
        for i, out in enumerate(outs):
            if out.preempted_req_ids:
                self.num_preemptions[i] += len(out.preempted_req_ids)
                self._place_preempted_spans_again(out.preempted_req_ids)
        plan = self.spans.build_plan(outs) if self.spans.spans else None
        plan = self._resume_elsewhere(outs, plan)
        # every instance's workers get the plan with their step (read by the ESP runner)
        outs = [InstanceSchedulerOutput.of(out, plan) for out in outs]
        if plan is not None:
            self._count_plan_bytes(plan)
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

    def _scale_up(self) -> None:
        """Before vLLM would preempt on a full instance, move decodes that need a new block to
        the instance with most room (their KV stays where it is). Preemption (recompute) is
        left to vLLM only when no other instance has a free block."""
        n = len(self.instances)
        need = [self.spans.blocks_needed(i) for i in range(n)]
        free = [self.pool.free_blocks(i) for i in range(n)]
        for i in range(n):
            if i in self.in_flight:
                continue  # its decodes are mid-step
            for r in reversed(list(self.instances[i].running)):  # vLLM's victims go first
                if need[i] <= free[i]:
                    break
                if not self.spans.can_migrate(r, i):
                    continue
                dst = self._scale_up_target(i, free, need)
                if dst is None:
                    return  # the whole pool is full: vLLM preempts (recompute)
                self.spans.migrate(r, i, dst, "merge" if self._decoding(dst) else "scale-up")
                self.pool.assign(r.request_id, dst)
                need[i] -= 1
                need[dst] += 1

    def _relieve_masters(self) -> None:
        """Multi-master decode: a spanning request whose master decodes more than
        ``esp.decode_minibatch`` requests continues on the least loaded holder of its KV
        (``planner.decode_plan.relieve_master``) when its next token needs a new block, so
        the requests sharing instances are decoded by several masters. No KV moves."""
        minibatch = self.esp.decode_minibatch
        if not minibatch:
            return
        n = len(self.instances)
        loads = {i: len(self.instances[i].running) for i in range(n)}
        if max(loads.values()) <= minibatch:
            return
        free = {i: self.pool.free_blocks(i) - self.spans.blocks_needed(i)
                for i in range(n) if i not in self.spans.reserved}
        for span in list(self.spans.spans.values()):
            r, src = span.request, span.master
            if span.keep_on_master or src in self.in_flight or \
                    not self.spans.can_migrate(r, src):
                continue
            dst = relieve_master(loads, src, span.holders, free, minibatch)
            if dst is None:
                continue
            self.spans.migrate(r, src, dst, "relieve")
            self.pool.assign(r.request_id, dst)
            loads[src] -= 1
            loads[dst] += 1
            free[dst] -= 1
            if src in free:
                free[src] += 1  # its new block is no longer needed there

    def _decoding(self, instance: int) -> bool:
        return bool(self.instances[instance].running)

    def _scale_up_target(self, src: int, free: list[int], need: list[int]) -> int | None:
        """The global manager's order (planner.decode_plan.fix_shortage): an idle instance
        with a free block first (scale up); else join the decode batch of the busy instance
        with the most room (a merge: the two batches now share that instance); most room,
        then the lowest id, within each kind. None when no other instance has a free block."""
        room = [(not self._decoding(k), free[k] - need[k], -k) for k in range(len(free))
                if k != src and k not in self.spans.reserved and free[k] - need[k] >= 1]
        return -max(room)[2] if room else None

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

    def place_span_again(self, view_id: str) -> None:
        """Drop every view of a spanning request and place it again from scratch."""
        real = self.spans.take_back(view_id)
        if real is not None:
            self.pool.forget(real.request_id)
            self.pending_spans.insert(0, real)
            self._placed_again.add(real.request_id)

    def dispatch_again(self, request: Request) -> None:
        """A request taken off an instance (lost): placed again like a new one."""
        self._placed_again.add(request.request_id)
        if self.spans.needs_span(request):
            self.pending_spans.insert(0, request)
        else:
            self._dispatch(request)

    def fits_live_pools(self, request: Request) -> bool:
        live = [i for i in range(self.pool.num_instances) if i not in self.pool.dead]
        need = self.pool.blocks_for(request.num_tokens + 1)
        if not self.spans.enabled or request_blockers(request):
            return any(need <= self.pool.total_blocks(i) for i in live)
        return need <= sum(self.pool.total_blocks(i) for i in live)

    def _place_preempted_spans_again(self, preempted_ids) -> None:
        for rid in preempted_ids:
            self.place_span_again(rid)

    def _count_plan_bytes(self, plan) -> None:
        """Bytes the span attention of this step sends, from the plan's shapes (the workers
        count the same on their communicator)."""
        q_row, lse_row, kv_row = self._layer_bytes
        for s in plan.spans:
            for p in s.peers:
                if p.instance == s.instance:
                    continue  # an earlier chunk on the asking instance: computed there
                self.esp_bytes[s.instance] += s.num_query_tokens * q_row
                self.esp_bytes[p.instance] += s.num_query_tokens * (q_row + lse_row)
        for ring in plan.rings:  # member r forwards the shards of r, r-1, ..., r-k+2
            rows = [m.num_rows for m in ring.members]
            k = len(rows)
            for r, m in enumerate(ring.members):
                self.esp_bytes[m.instance] += kv_row * sum(rows[(r - h) % k]
                                                           for h in range(k - 1))

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
                _merge_engine_core_outputs(merged, client, eco)
        for eco in merged.values():
            for o in eco.outputs:
                if o.finish_reason is not None:
                    self.decode_instances[self.spans.instances_of(o.request_id)] += 1
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
            eco.scheduler_stats = self._aggregate_stats(stats)
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
        return self._aggregate_stats([s.make_stats() for s in self.instances])

    def esp_stats(self) -> dict:
        """Per-instance numbers for /metrics (lists indexed by instance id)."""
        usages = self.pool.usages()
        counts = [s.get_request_counts() for s in self.instances]
        return {
            "kv_used_blocks": [u.used_blocks for u in usages],
            "kv_total_blocks": [u.total_blocks for u in usages],
            "kv_usage": [u.usage for u in usages],
            "running": [c[0] for c in counts],
            "waiting": [c[1] for c in counts],
            "preemptions": list(self.num_preemptions),
            "dispatched": list(self.num_dispatched),
            "esp_bytes_sent": list(self.esp_bytes),
            # pool-wide counters
            "spanning_requests": self.spans.num_spanning,
            "scale_up": self.spans.num_scale_up,
            "merge": self.spans.num_merge,
            "master_moves": self.spans.num_master_moves,
            "scale_down": self.spans.num_scale_down,
            "span_recompute": self.spans.num_recompute,
            "parallel_prefills": self.spans.num_parallel_prefills,
            "ring_prefills": self.spans.num_ring_prefills,
            "batched_ring_prefills": self.spans.num_batched_ring_prefills,
            "planned_prefill_instances": dict(self.planned_prefills),
            "prefill_instances": dict(self.spans.prefill_instances),
            "decode_instances": dict(self.decode_instances),
            "instances_alive": self.health.num_alive,
            **self._prediction_stats(),
        }

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

    def _aggregate_stats(self, stats: list[SchedulerStats | None]) -> SchedulerStats:
        stats = [s for s in stats if s is not None]
        prefix = PrefixCacheStats()
        for s in stats:
            p = s.prefix_cache_stats
            prefix.reset = prefix.reset or p.reset
            prefix.requests += p.requests
            prefix.queries += p.queries
            prefix.hits += p.hits
            prefix.preempted_requests += p.preempted_requests
            prefix.preempted_queries += p.preempted_queries
            prefix.preempted_hits += p.preempted_hits
        running, waiting = self.get_request_counts()
        out = SchedulerStats(
            num_running_reqs=running,
            num_waiting_reqs=waiting - sum(s.num_skipped_waiting_reqs for s in stats),
            num_skipped_waiting_reqs=sum(s.num_skipped_waiting_reqs for s in stats),
            kv_cache_usage=self.get_kv_cache_usage(),
            prefix_cache_stats=prefix,
            kv_cache_eviction_events=[e for s in stats for e in s.kv_cache_eviction_events],
        )
        out.esp = self.esp_stats()  # field added by vllm_esp_patches.scheduler_stats_field
        return out


def _attention_row_bytes(vllm_config) -> tuple[int, int, int]:
    """Bytes per token over all layers (and TP ranks): a query or output row, its LSE, and
    its K plus V rows."""
    mc, pc = vllm_config.model_config, vllm_config.parallel_config
    layers = mc.get_num_layers(pc)
    heads = mc.get_num_attention_heads(pc) * pc.tensor_parallel_size
    kv_heads = mc.get_num_kv_heads(pc) * pc.tensor_parallel_size
    row = mc.get_head_size() * mc.dtype.itemsize
    return layers * heads * row, layers * heads * 4, 2 * layers * kv_heads * row


def _merge_engine_core_outputs(merged: dict[int, EngineCoreOutputs], client: int,
                               eco: EngineCoreOutputs) -> None:
    if client not in merged:
        merged[client] = eco
        return
    base = merged[client]
    base.outputs = list(base.outputs) + list(eco.outputs)
    if eco.finished_requests:
        base.finished_requests = (base.finished_requests or set()) | eco.finished_requests
    base.timestamp = max(base.timestamp, eco.timestamp or time.monotonic())


def _has_work(out: SchedulerOutput, plan, instance: int) -> bool:
    """Does this instance's step need its workers (tokens to compute, requests to drop from
    its runner, or chunks to serve to peers)?"""
    return bool(out.total_num_scheduled_tokens or out.finished_req_ids or out.preempted_req_ids
                or out.free_encoder_mm_hashes or out.kv_connector_metadata is not None
                or (plan is not None and plan.involves(instance)))
