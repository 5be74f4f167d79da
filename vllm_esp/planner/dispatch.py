"""Step 1 — dispatching: which waiting requests start their prefill this iteration.

Scanned in queue order. A request ``r`` (prefill length ``l``) is admitted when all hold:

* **worst-case KV**: the blocks every running and admitted request would hold at its expected
  end (``Request.expected_total_tokens``: max_tokens, or the predicted output when a predictor
  ran) fit in ``admission_fraction`` of the pool — so decodes never need recompute preemption
  unless predictions are wrong. An empty system admits one request regardless, and a request
  whose prompt alone exceeds the pool is rejected;
* **KV now**: its prompt fits in the free blocks of the instances prefill may use — idle ones,
  plus decode batches paused for it (cheapest first: lowest decode rate per free block);
* **bounded prefill**: predicted prefill time ``≤ max_prefill_time`` and tokens
  ``≤ max_prefill_tokens`` (the first admitted request is exempt, or it would starve);
* **cost in one unit** (latency.py): what admitting ``r`` costs the decodes it pauses must not
  exceed what it saves ``r``, both in SLO-normalised latency. Cost: the extra prefill time
  ``ΔT`` times the decode rates of batches already paused, plus the whole prefill time times
  those newly paused. Gain: ``r``'s waiting rate times the delay it avoids, ``wait so far +
  max(T_prefill, remaining decode time of the batches it pauses)`` — not admitting ``r`` makes
  it wait for those batches (WSPT order of a prefill and a batch's remaining decode); the age
  term makes the rule starvation-free. Idle instances cost nothing, so their prefills always
  pass.

Out of order without starvation (EASY backfilling): the first request that fails the
worst-case KV check becomes the *head* and gets a reservation — the decode step ``t_head`` by
which enough live requests will have finished (each at most its expected output) for its
worst case to fit, and the ``extra`` blocks left at that step. A later request may still start
if it fits now and either finishes (at its expected output) before ``t_head`` or fits in
``extra``, so it never delays the head, and short requests keep flowing behind a long one.
Scan order: the first ``max_prefill_requests + lookahead`` requests in queue order (the oldest,
so aged requests get their turn), then the ``lookahead`` shortest prompts of the rest (WSPT:
a short prompt's waiting rate per second of prefill is the highest, so it is the cheapest
to admit). A queue led by long prompts the cost rule refuses no longer hides the short ones
behind it; the work per iteration stays bounded (``O(queue)`` for the selection).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .cost_model import CostModel
from .decode_plan import BatchView
from .kv_pool import blocks_for
from .latency import UNWEIGHTED, LatencyWeights, decode_rate, expected_output, remaining_steps, waiting_rate
from .types import Request


@dataclass(slots=True)
class DispatchInput:
    waiting: list[Request]
    running: dict[str, Request]
    free: dict[int, int]  # scratch free blocks per instance (after decode reservations)
    idle: list[int]  # instances with no decode batch
    pausable: list[BatchView]  # decode batches prefill may take over this iteration
    capacity_blocks: int  # all blocks of the pool
    block_size: int
    now: float  # seconds


@dataclass(slots=True)
class DispatchResult:
    admitted: list[Request] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    paused: list[BatchView] = field(default_factory=list)
    head: str | None = None  # the request holding a reservation (blocked by worst-case KV)


def slo_of(cfg) -> LatencyWeights:
    return getattr(cfg, "slo", None) or UNWEIGHTED


def decode_weight(batch: BatchView, running: dict[str, Request],
                  w: LatencyWeights = UNWEIGHTED) -> float:
    """Σ decode rates over a batch (1/s): SLO-normalised latency lost per second of pause."""
    return sum(decode_rate(running[rid], w) for rid in batch.req_ids)


def remaining_decode_time(batch: BatchView, running: dict[str, Request], cost: CostModel) -> float:
    """Seconds the batch still decodes: mean remaining steps × its current iteration time."""
    reqs = [running[rid] for rid in batch.req_ids]
    if not reqs:
        return 0.0
    steps = sum(remaining_steps(r) for r in reqs) / len(reqs)
    ctx = sum(r.prompt_len + r.output_len for r in reqs)
    return steps * cost.decode_time(len(batch.instances), len(reqs), ctx)


def worst_case_blocks(req: Request, block_size: int) -> int:
    return blocks_for(req.expected_total_tokens(), block_size) + 1  # +1: split over instances


def reservation(head_blocks: int, budget: int, live: list[tuple[int, int]]) -> tuple[int, int]:
    """``(t_head, extra)`` for a head needing ``head_blocks`` of worst-case KV.

    ``live``: ``(steps until it ends at most, worst-case blocks)`` of every live request.
    ``t_head``: the first decode step at which the rest fits with the head; ``extra``: the
    blocks still free at that step once the head holds its own (negative: never fits).
    """
    held = sum(b for _, b in live)
    t = 0
    ends = sorted(live)
    i = 0
    while held + head_blocks > budget and i < len(ends):
        t = ends[i][0]
        while i < len(ends) and ends[i][0] == t:
            held -= ends[i][1]
            i += 1
    return t, budget - held - head_blocks


class _Backfill:
    """The head's reservation, and which later requests may start without delaying it."""

    def __init__(self, t_head: int, extra: int):
        self.t_head, self.extra = t_head, extra

    def allows(self, steps: int, blocks: int) -> bool:
        return steps <= self.t_head or blocks <= self.extra

    def take(self, steps: int, blocks: int) -> None:
        if steps > self.t_head:
            self.extra -= blocks


def dispatch(inp: DispatchInput, cost: CostModel, cfg) -> DispatchResult:
    """Admit waiting requests (see the module doc); reads ``inp``, never mutates it."""
    res = DispatchResult()
    bs = inp.block_size
    w = slo_of(cfg)
    budget = int(cfg.admission_fraction * inp.capacity_blocks)
    worst = sum(worst_case_blocks(r, bs) for r in inp.running.values())
    weight = {b.batch_id: decode_weight(b, inp.running, w) for b in inp.pausable}
    pausable = sorted(inp.pausable, key=lambda b: (
        weight[b.batch_id] / max(1, sum(inp.free[i] for i in b.instances)), b.batch_id))
    remaining: dict[int, float] = {}
    n_inst = len(inp.idle)
    avail = sum(inp.free[i] for i in inp.idle)
    s1 = s2 = need = 0
    w_paused = 0.0
    t_cur = 0.0
    backfill: _Backfill | None = None
    for req in scan_order(inp.waiting, cfg.max_prefill_requests + cfg.lookahead, cfg.lookahead):
        l = req.prefill_len
        r_need = blocks_for(l, bs)
        if blocks_for(l + 1, bs) > inp.capacity_blocks:
            res.rejected.append(req.req_id)
            continue
        if len(res.admitted) >= cfg.max_prefill_requests:
            break
        empty = not inp.running and not res.admitted
        r_worst = worst_case_blocks(req, bs)
        r_steps = expected_output(req) + 1
        fits = empty or worst + r_worst <= budget
        if fits and backfill is not None and not backfill.allows(r_steps, r_worst):
            fits = False
        if not fits:
            if backfill is None and not empty:
                backfill = _Backfill(*reservation(r_worst, budget, _live(inp, res, bs)))
                res.head = req.req_id
            continue
        ok = not res.admitted or s1 + l <= cfg.max_prefill_tokens
        # pause decode batches until the prompt's KV fits
        newly: list[BatchView] = []
        k, a = n_inst, avail
        while ok and need + r_need > a and len(newly) < len(pausable) - len(res.paused):
            b = pausable[len(res.paused) + len(newly)]
            newly.append(b)
            k += len(b.instances)
            a += sum(inp.free[i] for i in b.instances)
        ok = ok and need + r_need <= a and k > 0
        if ok:
            t_new = cost.prefill_time(k, s1 + l, s2 + l * l)
            ok = not res.admitted or cfg.max_prefill_time is None or t_new <= cfg.max_prefill_time
            w_new = sum(weight[b.batch_id] for b in newly)
            cost_paused = (t_new - t_cur) * w_paused + t_new * w_new
            avoided = max([t_new] + [_remaining(b, inp, cost, remaining) for b in newly])
            gain = waiting_rate(req, w) * (max(0.0, inp.now - req.arrival_time) + avoided)
            ok = ok and gain >= cost_paused
        if not ok:
            continue
        if backfill is not None:
            backfill.take(r_steps, r_worst)
        res.admitted.append(req)
        res.paused.extend(newly)
        n_inst, avail = k, a
        s1, s2, need = s1 + l, s2 + l * l, need + r_need
        worst += r_worst
        w_paused += w_new
        t_cur = t_new
    return res


def scan_order(waiting: list[Request], first: int, shortest: int) -> list[Request]:
    """The ``first`` requests in queue order, then the ``shortest`` shortest of the rest."""
    if len(waiting) <= first + shortest:
        return waiting
    rest = heapq.nsmallest(shortest, enumerate(waiting[first:]),
                           key=lambda ir: (ir[1].prefill_len, ir[0]))
    return waiting[:first] + [r for _, r in rest]


def _remaining(b: BatchView, inp: DispatchInput, cost: CostModel, memo: dict[int, float]) -> float:
    if b.batch_id not in memo:
        memo[b.batch_id] = remaining_decode_time(b, inp.running, cost)
    return memo[b.batch_id]


def _live(inp: DispatchInput, res: DispatchResult, bs: int) -> list[tuple[int, int]]:
    """``(steps until it ends at most, worst-case blocks)`` of running and admitted requests."""
    live = [(remaining_steps(r), worst_case_blocks(r, bs)) for r in inp.running.values()]
    live += [(expected_output(r) + 1, worst_case_blocks(r, bs)) for r in res.admitted]
    return live
