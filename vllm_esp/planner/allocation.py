"""Step 2 — elastic instance allocation: how many instances the admitted prefills get.

Prefill starts with the idle instances and those of decode batches dispatching paused for KV.
More instances make the prefill faster (fitted ``T(k)``), so two further moves are weighed,
both in SLO-normalised latency (latency.py, the unit of dispatch.py): ``R`` = Σ waiting rates
of the admitted requests, ``W_b`` = Σ decode rates of batch ``b``:

* **compaction** — a running decode batch whose least-loaded instance's KV fits on its other
  instances migrates it there; the emptied instance joins the prefill. Worth it when
  ``(T(k) − T(k+1))·R`` exceeds ``T_migrate·(R + W_b)``: the prefill (and the batch's
  decodes) wait for the copy.
* **preempt-or-keep** — a whole decode batch pauses this iteration and lends its instances when
  ``(T(k) − T(k+k_b))·R`` exceeds ``T(k+k_b)·W_b``; otherwise it keeps decoding.

Paused batches keep their KV (no recompute); they simply skip one iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost_model import CostModel
from .decode_plan import BatchView, PoolView
from .dispatch import decode_weight, slo_of
from .latency import waiting_rate
from .kv_pool import blocks_for
from .types import Migration, Request


@dataclass(slots=True)
class Allocation:
    instances: list[int] = field(default_factory=list)  # instances available to prefill
    migrations: list[Migration] = field(default_factory=list)
    paused: list[BatchView] = field(default_factory=list)  # batches paused for compute


def _prefill_time(cost: CostModel, k: int, s1: int, s2: int) -> float:
    return cost.prefill_time(k, s1, s2) if k > 0 else float("inf")


def allocate(
    admitted: list[Request],
    base: list[int],
    runnable: list[BatchView],
    view: PoolView,
    free: dict[int, int],
    running: dict[str, Request],
    cost: CostModel,
    cfg,
) -> Allocation:
    """Grow ``base`` (idle + KV-paused instances) by compaction and compute pausing.

    ``runnable`` batches that pause are removed from it; compaction edits ``view`` overrides,
    ``free`` and the compacted batch's instance set.
    """
    out = Allocation(instances=list(base))
    if not admitted:
        return out
    s1 = sum(r.prefill_len for r in admitted)
    s2 = sum(r.prefill_len ** 2 for r in admitted)
    w = slo_of(cfg)
    rate = sum(waiting_rate(r, w) for r in admitted)
    weight = {b.batch_id: decode_weight(b, running, w) for b in runnable}
    if cfg.compaction:
        for b in list(runnable):
            inst = _compact(b, view, free, cost, s1, s2, rate, weight[b.batch_id],
                            len(out.instances), out)
            if inst is not None:
                out.instances.append(inst)
    if cfg.pause_decodes:
        for b in sorted(runnable, key=lambda b: (weight[b.batch_id] / len(b.instances), b.batch_id)):
            k = len(out.instances)
            k2 = k + len(b.instances)
            t2 = _prefill_time(cost, k2, s1, s2)
            gain = (_prefill_time(cost, k, s1, s2) - t2) * rate
            if gain > t2 * weight[b.batch_id]:
                runnable.remove(b)
                out.paused.append(b)
                out.instances.extend(sorted(b.instances))
    return out


def _compact(b, view, free, cost, s1, s2, rate, w_b, k, out) -> int | None:
    """Try to empty the least-loaded instance of ``b``; returns it if compaction pays off."""
    if len(b.instances) < 2:
        return None
    bs = view.block_size
    load = {i: 0 for i in b.instances}
    for rid in b.req_ids:
        for i, t in view.placement.get(rid, {}).items():
            load[i] += t
    src = min(b.instances, key=lambda i: (load[i], i))
    moves = _plan_moves(b, src, view, free)
    if moves is None:
        return None
    tokens = sum(m.num_tokens for m in moves)
    t_mig = cost.migration_time(tokens)
    gain = (_prefill_time(cost, k, s1, s2) - _prefill_time(cost, k + 1, s1, s2)) * rate
    if gain <= t_mig * (rate + w_b):
        return None
    for m in moves:  # commit to the scratch view
        where = dict(view.placement[m.req_id])
        cur_dst = where.get(m.dst, 0)
        free[m.dst] -= blocks_for(cur_dst + m.num_tokens, bs) - blocks_for(cur_dst, bs)
        where[m.dst] = cur_dst + m.num_tokens
        free[m.src] += blocks_for(where.pop(m.src), bs)
        view.override(m.req_id, where)
    out.migrations.extend(moves)
    b.instances.discard(src)
    b.removed.append(src)
    return src


def _plan_moves(b, src, view, free) -> list[Migration] | None:
    """Whole-token moves of every request's KV on ``src`` into the batch's other instances."""
    bs = view.block_size
    room = {i: free[i] for i in b.instances if i != src}
    moves: list[Migration] = []
    for rid in b.req_ids:
        t = view.placement.get(rid, {}).get(src, 0)
        if t == 0:
            continue
        dst = max(room, key=lambda i: (room[i], -i))
        cur = view.placement[rid].get(dst, 0)
        extra = blocks_for(cur + t, bs) - blocks_for(cur, bs)
        if extra > room[dst]:
            return None  # keep it simple: one destination per request
        room[dst] -= extra
        moves.append(Migration(rid, src, dst, t))
    return moves
