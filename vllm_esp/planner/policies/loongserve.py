"""Baseline: LoongServe's own scheduler, ported from its repository, on this planner's types.

Source: ``loongserve/longserve_server/router/manager.py`` (RouterManager) and ``req_queue.py``
of github.com/LoongServe/LoongServe (commit f6e8fc1), read for their rules and written afresh;
every time estimate comes from the shared ``CostModel`` (its ``Profiler.predict`` is
``prefill_time``), so it is judged on the same terms as ESP. Tokens, not blocks (LightLLM's
token-granular KV): the simulator runs it with ``block_size = 1``.

Execution model (``RouterManager._step``; the simulator's ``loongserve_engine.py`` drives it):

* a *step* decodes every batch once, in lockstep (``plan``); every ``max_wait_tokens`` steps,
  or when nothing runs, the queue is asked for new requests (loongserve_queue.py);
* admitted requests start a *macro-iteration* (``_schedule_new_req_list_with_decoding``):
  compaction (``_minimize_decoding_occupied_instances``: KV of the least-used busy instances
  moves to the most-used ones while the prefill speed-up beats the migration time); decode
  batches with the most free room pause until the prompts' tokens fit; each other batch
  pauses too when ``(T(k) − T(k+k_b))·Σ1/l ≥ T(k+k_b)·n_b²/Σ generated``; the rest decode
  alongside (taking instances back when they cannot decode). The prompts, longest first, are
  split over the free instances, least used first, by LoongServe's DP (``min Σ T·Σ1/l`` over
  contiguous groups on a prefix of the instances, with its C++ pruning), and each group's KV
  fills its most-used instance first (``_get_batch_prefill_migration_plan``);
* inside a macro-iteration every group runs on its own clock (``continue_group``): decode
  groups keep decoding and a group whose requests all finished refills its instances
  greedily with prompts that end before the macro-iteration's longest prefill; when every
  prefill has ended and every group its iteration, the next step starts;
* short of KV, the newest request is offloaded (loongserve_decode.py).

Deviations (all in LoongServe's favour or neutral): paused batches that share instances with a
new batch are merged into it when the prefill is planned, so they resume decoding with it
rather than at the macro-iteration's end (this planner keeps one batch per instance); a
prompt whose KV cannot fit the whole pool is rejected, as for every other system.
"""

from __future__ import annotations

from ..batch_joins import BatchJoins
from ..cost_model import CostModel
from ..kv_pool import blocks_for
from ..state import ClusterState
from ..types import IterationPlan, KeepRange, Migration, PrefillBatch, ScaleEvent
from .loongserve_decode import offload_victim, plan_decode, views_of
from .loongserve_queue import LoongServeConfig, QueueView, RequestQueue

INF = float("inf")


class LoongServePolicy:
    name = "loongserve"

    def __init__(self, cost: CostModel, cfg=None):
        self.cost = cost
        self.cfg = cfg if isinstance(cfg, LoongServeConfig) else LoongServeConfig()
        self.queue = RequestQueue(self.cfg)
        self.has_wait_tokens = 0  # decode steps since the last macro-iteration
        self.finished_output = self.cfg.initial_mean_output  # its sum_finished_req_output_len
        self.finished = 1  # its num_finished_reqs
        self.macro_time = 0.0  # s: the last macro-iteration's longest predicted prefill

    # ---- observations ------------------------------------------------------------------
    def on_finished(self, req) -> None:
        """Online mean output length (``_post_forward_batch``)."""
        self.finished_output += req.output_len
        self.finished += 1

    @property
    def mean_output(self) -> float:
        return self.finished_output / self.finished

    # ---- RouterManager._step -----------------------------------------------------------
    def plan(self, state: ClusterState, now: float) -> IterationPlan:
        """One lockstep step, or the start of a macro-iteration (``plan.prefill`` non-empty)."""
        plan = IterationPlan()
        cap = _capacity(state)
        total = sum(state.pool.capacity.values())
        plan.rejected = [r.req_id for r in state.waiting
                         if blocks_for(r.prefill_len + 1, state.block_size) > total]
        waiting = [r for r in state.waiting if r.req_id not in set(plan.rejected)]
        used = _used(state)
        idle = not state.batches
        if idle or self.has_wait_tokens >= self.cfg.max_wait_tokens:
            running = list(state.running.values())
            new = self.queue.admit(QueueView(waiting, running, used, cap), self.cost,
                                   self.mean_output)
            if new:
                self.has_wait_tokens = 0
                self._macro(state, new, used, cap, plan)
                return plan
            if idle:
                return plan
        extra = [i for i in _instances(state) if used[i] == 0 and i not in _owned(state)]
        step = plan_decode(state, views_of(state), used, cap, extra, self.cost,
                           self.cfg.min_comp_bound_decoding_batch_size)
        if step is None:
            plan.preempted = [offload_victim(state)]
            self.has_wait_tokens = 0
            return plan
        plan.decode, plan.scale_events = step.decode, step.scale_events
        self.has_wait_tokens += 1
        return plan

    def continue_group(self, view: ClusterState, now: float, left_time: float) -> IterationPlan:
        """``_run_independent_batch_list``: the next iteration of one group inside a
        macro-iteration (``view`` holds its instances): decode without scaling, or, once its
        requests are all done, a greedy refill ending within ``left_time`` seconds."""
        plan = IterationPlan()
        cap = _capacity(view)
        used = _used(view)
        if view.batches:
            step = plan_decode(view, views_of(view), used, cap, [], self.cost,
                               self.cfg.min_comp_bound_decoding_batch_size)
            if step is not None:
                plan.decode, plan.scale_events = step.decode, step.scale_events
            return plan
        if left_time <= 0:
            return plan
        insts = _instances(view)
        total = sum(view.pool.capacity.values())
        waiting = [r for r in view.waiting
                   if blocks_for(r.prefill_len + 1, view.block_size) <= total]
        new = self.queue.admit_greedy(waiting, len(insts), cap, left_time, self.cost)
        if new:
            plan.prefill, _ = self._prefills(view, new, insts, used, cap, [])
        return plan

    # ---- RouterManager._schedule_new_req_list_with_decoding ----------------------------
    def _macro(self, state, new, used, cap, plan) -> None:
        cost = self.cost
        lens = [r.prefill_len for r in new]
        s1, s2, inv = sum(lens), sum(x * x for x in lens), sum(1.0 / x for x in lens)
        n = len(state.instances)
        batches = views_of(state)
        owned = _owned(state)
        available = [i for i in _instances(state) if used[i] == 0 and i not in owned]
        min_busy = -(-sum(used.values()) // cap)
        if min_busy < n - len(available) and s1 <= (n - min_busy) * cap:
            batches = self._compact(state, batches, used, cap, available, n - min_busy, s1,
                                    s2, plan)
        pending = []
        if s1 > len(available) * cap:
            need = s1 - len(available) * cap
            by_room = sorted(batches, key=lambda b: _room(b, used, cap))
            while need > 0 and by_room:
                b = by_room.pop()
                pending.append(b)
                need -= _room(b, used, cap)
                available += b.instances
            batches = by_room
        running = []
        for b in batches:
            k = len(available)
            t_cur = cost.prefill_time(k, s1, s2) if k else INF
            t_nxt = cost.prefill_time(k + len(b.instances), s1, s2)
            gen = sum(state.running[r].output_len for r in b.req_ids)
            slowdown = t_nxt * len(b.req_ids) * len(b.req_ids) / max(1, gen)
            if (t_cur - t_nxt) * inv < slowdown:
                running.append(b)
            else:
                pending.append(b)
                available += b.instances
        step = plan_decode(state, running, used, cap, [], cost,
                           self.cfg.min_comp_bound_decoding_batch_size)
        taken: list[int] = []
        while step is None and running and s1 <= (len(available) - 1) * cap:
            free = [i for i in available if i not in owned]
            if not free:  # LoongServe may also take a paused batch's instance; one batch
                break  # per instance here
            available.remove(free[-1])
            taken.append(free[-1])
            step = plan_decode(state, running, used, cap, list(taken), cost,
                               self.cfg.min_comp_bound_decoding_batch_size)
        if step is None:
            pending += running
            available = _instances(state)
            step = None
        if step is not None:
            plan.decode = step.decode
            plan.scale_events += step.scale_events
        plan.prefill, events = self._prefills(state, new, available, used, cap, pending)
        plan.scale_events += events
        plan.paused_batch_ids = sorted(b.batch_id for b in pending)
        self.macro_time = max((pb.predicted_time for pb in plan.prefill), default=0.0)

    def _compact(self, state, batches, used, cap, available, max_idle, s1, s2, plan):
        """``_minimize_decoding_occupied_instances``: empty the least-used busy instances into
        the most-used ones while the prefill's speed-up beats the migration time."""
        cost = self.cost
        of = {i: b for b in batches for i in b.instances}
        order = sorted(of, key=lambda i: -used[i])
        start = (len(state.instances) - max_idle) - 1
        placement = state.pool.placement
        moved: dict[str, dict[int, int]] = {}
        root: dict[int, int] = {}  # absorbed batch -> the batch that absorbed it
        downs: list[tuple[int, int]] = []  # (batch, instance) scaled down
        while len(available) < max_idle and order:
            src = order.pop()
            k = len(available)
            if k and s1 <= k * cap:
                gain = cost.prefill_time(k, s1, s2) - cost.prefill_time(k + 1, s1, s2)
                if gain < cost.migration_time(used[src]):
                    break
            sb = of[src]
            while used[src] > 0 and 0 <= start < len(order):
                dst = order[start]
                amount = min(used[src], cap - used[dst])
                if amount <= 0:
                    start -= 1
                    continue
                db = of[dst]
                if db is not sb:
                    db.instances = sorted(set(db.instances) | set(sb.instances))
                    db.req_ids += sb.req_ids
                    db.merged += [sb.batch_id] + sb.merged
                    root[sb.batch_id] = db.batch_id
                    for i in sb.instances:
                        of[i] = db
                    batches = [b for b in batches if b is not sb]
                    sb = db
                for rid in sb.req_ids:
                    where = moved.setdefault(rid, dict(placement.get(rid, {})))
                    t = min(amount, where.get(src, 0))
                    if t <= 0:
                        continue
                    plan.migrations.append(Migration(rid, src, dst, t))
                    where[src] -= t
                    where[dst] = where.get(dst, 0) + t
                    used[src] -= t
                    used[dst] += t
                    amount -= t
                    if amount == 0:
                        break
            if used[src] > 0:
                break  # nowhere left to move it (does not happen with a sound min_busy)
            sb.instances = [i for i in sb.instances if i != src]
            downs.append((sb.batch_id, src))
            available.append(src)
        for b in batches:
            if b.merged:
                plan.scale_events.append(ScaleEvent("merge", b.batch_id,
                                                    merged_batch_ids=list(b.merged)))
                b.merged = []
        for bid, src in downs:  # merges apply first: name the surviving batch
            while bid in root:
                bid = root[bid]
            plan.scale_events.append(ScaleEvent("down", bid, [src]))
        return batches

    # ---- RouterManager._schedule_new_req_list -----------------------------------------
    def _prefills(self, state, new, available, used, cap, pending):
        """Prefill groups of ``new`` over ``available`` (DP), their KV placement, and the
        batches they join. Returns (prefill batches, merge events)."""
        reqs = sorted(new, key=lambda r: -r.prefill_len)
        insts = sorted(available, key=lambda i: (used[i], i))
        groups = best_groups([r.prefill_len for r in reqs], [cap - used[i] for i in insts],
                             self.cost)
        joins = BatchJoins({i: b.batch_id for b in pending for i in b.instances},
                           state.next_batch_id)
        out = []
        for r0, r1, i0, i1, t in groups:
            members, group = reqs[r0:r1], insts[i0:i1]
            keep = fill_most_used(members, group, used, cap)
            target = joins.target(kr.instance_id for rs in keep.values() for kr in rs)
            out.append(PrefillBatch(sorted(group), [r.req_id for r in members], keep, t, target))
        events = joins.finish(out)
        return out, events


def best_groups(lengths: list[int], free: list[int], cost: CostModel):
    """LoongServe's prefill DP (longserve_c_scheduler ``minimize_prefill_iteration_time``):
    ``lengths`` sorted descending into contiguous groups, each on a contiguous run of a
    *prefix* of ``free`` (tokens free per instance, least used first), memory permitting;
    minimises ``Σ T(k)·Σ1/l`` over the prefix length too. Returns
    ``[(r0, r1, i0, i1, time)]``. Keeps its pruning: the last group of ``(i, j)`` has at most
    as many requests as that of ``(i, j−1)`` and at least as many instances as that of
    ``(i−1, j)``."""
    n, m = len(lengths), len(free)
    s1, s2, inv, fb = [0], [0], [0.0], [0]
    for x in lengths:
        s1.append(s1[-1] + x)
        s2.append(s2[-1] + x * x)
        inv.append(inv[-1] + 1.0 / x)
    for f in free:
        fb.append(fb[-1] + f)
    coef = {k: cost.prefill_coeffs(k) for k in range(1, m + 1)}
    f = [[INF] * (m + 1) for _ in range(n + 1)]
    last = [[(-1, -1)] * (m + 1) for _ in range(n + 1)]
    f[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            max_size = last[i][j - 1][0] if last[i][j - 1][0] != -1 else i
            for size in range(1, max_size + 1):
                a = i - size
                min_k = last[i - 1][j][1] if last[i - 1][j][1] != -1 else 1
                g1, g2, gi = s1[i] - s1[a], s2[i] - s2[a], inv[i] - inv[a]
                for k in range(j, min_k - 1, -1):
                    if g1 > fb[j] - fb[j - k]:
                        break
                    c = coef[k]
                    v = (c.a + c.b * g1 + c.c * g2) * gi + f[a][j - k]
                    if v < f[i][j]:
                        f[i][j], last[i][j] = v, (size, k)
    best_j = min(range(1, m + 1), key=lambda j: (f[n][j], j))
    if f[n][best_j] == INF:
        raise ValueError(f"no prefill grouping of {n} requests on {m} instances fits")
    out = []
    i, j = n, best_j
    while i > 0:
        size, k = last[i][j]
        c = coef[k]
        g1, g2 = s1[i] - s1[i - size], s2[i] - s2[i - size]
        out.append((i - size, i, j - k, j, c.a + c.b * g1 + c.c * g2))
        i, j = i - size, j - k
    out.reverse()
    return out


def fill_most_used(members, group: list[int], used: dict[int, int], cap: int):
    """``_get_batch_prefill_migration_plan``: each request's tokens, in order, fill the
    group's most-used instance to capacity, then the next. Updates ``used``."""
    order = sorted(group, key=lambda i: (-used[i], i))
    keep, idx, fresh = {}, 0, 0
    for r in members:
        ranges, pos, left = [], 0, r.prefill_len
        while left > 0:
            while used[order[idx]] + fresh >= cap:
                used[order[idx]] += fresh
                idx, fresh = idx + 1, 0
            take = min(left, cap - used[order[idx]] - fresh)
            ranges.append(KeepRange(order[idx], pos, pos + take))
            pos, left, fresh = pos + take, left - take, fresh + take
        keep[r.req_id] = ranges
    if order:
        used[order[idx]] += fresh
    return keep


def _capacity(state: ClusterState) -> int:
    """``max_total_token_num``: tokens one instance holds (instances are equal)."""
    return min(state.pool.capacity.values()) * state.block_size


def _used(state: ClusterState) -> dict[int, int]:
    return {i: state.pool.used[i] * state.block_size for i in state.pool.capacity}


def _instances(state: ClusterState) -> list[int]:
    return [i.instance_id for i in state.instances]


def _owned(state: ClusterState) -> set[int]:
    return {i for b in state.batches.values() for i in b.instances}


def _room(b, used, cap) -> int:
    return len(b.instances) * cap - sum(used[i] for i in b.instances)
