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
  those newly paused. Gain: ``r``'s waiting rate times the delay it avoids, ``age +
  max(T_prefill, drain)`` with ``drain`` the remaining decode time of the batches it pauses —
  not admitting ``r`` makes it wait for those batches (WSPT order of a prefill and a batch's
  remaining decode). Idle instances cost nothing, so their prefills always pass;
* **no starvation**: deferring assumes the paused batches drain, but under a steady stream
  new requests keep joining them. Once ``r`` has waited ``starvation_factor`` × its alone
  time (its prefill plus its decode on one instance, ``alone_time``) it pauses them anyway —
  if its prefill is shorter than their ``drain`` (pausing nearly finished decodes for a long
  prefill stays refused: waiting for them is short).

Out of order without starvation (EASY backfilling): the first request that fails the
worst-case KV check becomes the *head* and gets a reservation — the decode step ``t_head`` by
which enough live requests will have finished (each at most its expected output) for its
worst case to fit, and the ``extra`` blocks left at that step. A later request may still start
if it fits now and either finishes (at its expected output) before ``t_head`` or fits in
``extra``, so it never delays the head, and short requests keep flowing behind a long one.
Scan order (``out_of_order``, the default; otherwise strictly FIFO, stopping at the first
request not admitted): the first ``max_prefill_requests + lookahead`` requests in queue order (the oldest,
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
    shortest: list[Request] | None = None  # waiting by prefill length, if the caller keeps it
    memo: dict | None = None  # per-request constants kept across calls by the caller


@dataclass(slots=True)
class DispatchResult:
    admitted: list[Request] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    paused: list[BatchView] = field(default_factory=list)
    head: str | None = None  # the request holding a reservation (blocked by worst-case KV)


def slo_of(cfg) -> LatencyWeights:
    return getattr(cfg, "slo", None) or UNWEIGHTED


def decode_weight(batch: BatchView, running: dict[str, Request],
                  w: LatencyWeights = UNWEIGHTED, memo: dict | None = None) -> float:
    """Σ decode rates over a batch (1/s): SLO-normalised latency lost per second of pause.
    ``memo``: req_id -> rate, kept by the caller (fixed while a request runs, unless a
    predictor's estimate moves with its output)."""
    if memo is None:
        return sum(decode_rate(running[rid], w) for rid in batch.req_ids)
    total = 0.0
    for rid in batch.req_ids:
        rate = memo.get(rid)
        if rate is None:
            r = running[rid]
            rate = decode_rate(r, w)
            if r.predicted_output_len is None:  # a prediction moves with the output
                memo[rid] = rate
        total += rate
    return total


def remaining_decode_time(batch: BatchView, running: dict[str, Request], cost: CostModel) -> float:
    """Seconds the batch still decodes: mean remaining steps × its current iteration time."""
    n = len(batch.req_ids)
    if not n:
        return 0.0
    steps = ctx = 0
    for rid in batch.req_ids:  # latency.remaining_steps, inlined (hot)
        r = running[rid]
        left = r.expected_total_tokens() - r.prompt_len - r.output_len
        steps += left if left > 1 else 1
        ctx += r.prompt_len + r.output_len
    return steps / n * cost.decode_time(len(batch.instances), n, ctx)


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
    worst = _running_worst(inp, bs)
    pausable, prefix = _pause_order(inp, w)
    most = prefix[-1][1]  # free blocks if every pausable batch paused: KV now, at best
    remaining: dict[int, float] = {}  # index in ``pausable`` -> its remaining decode time
    coeffs: dict = {}
    p = 0  # batches paused so far (a prefix of ``pausable``)
    s1 = s2 = need = 0
    t_cur = 0.0
    now, lookahead, in_order = inp.now, cfg.lookahead, not cfg.out_of_order
    backfill: _Backfill | None = None
    if in_order:
        order = inp.waiting[:cfg.max_prefill_requests + 1]
    else:
        order = scan_order(inp.waiting, lookahead, lookahead, inp.shortest)
    memo = inp.memo if inp.memo is not None else {}
    for req in order:
        got = memo.get(req.req_id)
        if got is None or got[0] != req.output_len:
            got = memo[req.req_id] = _constants(req, bs, w, cost, cfg.starvation_factor)
        _, l, r_need, r_worst, r_steps, rate, patience = got
        if -(-(l + 1) // bs) > inp.capacity_blocks:
            res.rejected.append(req.req_id)
            continue
        if len(res.admitted) >= cfg.max_prefill_requests:
            break
        empty = not inp.running and not res.admitted
        fits = empty or worst + r_worst <= budget
        if fits and backfill is not None and not backfill.allows(r_steps, r_worst):
            fits = False
        if not fits:
            if backfill is None and not empty:
                backfill = _Backfill(*reservation(r_worst, budget, _live(inp, res, bs)))
                res.head = req.req_id
            if in_order:
                break
            continue
        need2 = need + r_need
        if need2 > most or (res.admitted and s1 + l > cfg.max_prefill_tokens):
            if in_order:
                break
            continue
        j = p  # pause the cheapest batches until the prompt's KV fits
        while prefix[j][1] < need2:
            j += 1
        k, _, w_j = prefix[j]
        ok = k > 0
        if ok:
            c = coeffs.get(k) or coeffs.setdefault(k, cost.prefill_coeffs(k))
            t_new = c.a + c.b * (s1 + l) + c.c * (s2 + l * l)
            ok = not res.admitted or cfg.max_prefill_time is None or t_new <= cfg.max_prefill_time
            w_old = prefix[p][2]
            cost_paused = (t_new - t_cur) * w_old + t_new * (w_j - w_old)
            if ok and cost_paused > 0.0:
                drain = 0.0  # when the batches it pauses would have finished anyway
                for x in range(p, j):
                    d = remaining.get(x)
                    if d is None:
                        d = remaining[x] = remaining_decode_time(pausable[x], inp.running, cost)
                    if d > drain:
                        drain = d
                age = now - req.arrival_time
                if age < 0.0:
                    age = 0.0
                ok = rate * (age + (t_new if t_new > drain else drain)) >= cost_paused or (
                    age >= patience and t_new <= drain)
        if not ok:
            if in_order:
                break
            continue
        if backfill is not None:
            backfill.take(r_steps, r_worst)
        res.admitted.append(req)
        res.paused.extend(pausable[p:j])
        p = j
        s1, s2, need = s1 + l, s2 + l * l, need2
        worst += r_worst
        t_cur = t_new
    return res


def _running_worst(inp: DispatchInput, bs: int) -> int:
    """Σ worst-case blocks of the running requests (each fixed while it runs: memoised)."""
    if inp.memo is None:
        return sum(worst_case_blocks(r, bs) for r in inp.running.values())
    memo = inp.memo.setdefault("worst blocks", {})
    total = 0
    for rid, r in inp.running.items():
        b = memo.get(rid)
        if b is None:
            b = worst_case_blocks(r, bs)
            if r.predicted_output_len is None:  # a prediction moves with the output
                memo[rid] = b
        total += b
    return total


def _pause_order(inp: DispatchInput, w: LatencyWeights):
    """Pausable batches, cheapest first (lowest decode rate per free block), and after pausing
    the first ``j`` of them: ``prefix[j] = (instances, free blocks, Σ decode rates)``."""
    rates = inp.memo.setdefault("decode rates", {}) if inp.memo is not None else None
    weight = {b.batch_id: decode_weight(b, inp.running, w, rates) for b in inp.pausable}
    room = {b.batch_id: sum(inp.free[i] for i in b.instances) for b in inp.pausable}
    pausable = inp.pausable if len(inp.pausable) < 2 else sorted(
        inp.pausable, key=lambda b: (weight[b.batch_id] / max(1, room[b.batch_id]), b.batch_id))
    k, a, wt = len(inp.idle), sum(inp.free[i] for i in inp.idle), 0.0
    prefix = [(k, a, wt)]
    for b in pausable:
        k, a, wt = k + len(b.instances), a + room[b.batch_id], wt + weight[b.batch_id]
        prefix.append((k, a, wt))
    return pausable, prefix


def scan_order(waiting: list[Request], first: int, shortest: int,
               by_length: list[Request] | None = None) -> list[Request]:
    """The ``first`` requests in queue order, then the ``shortest`` shortest of the rest.
    ``by_length``: at least ``first + shortest`` waiting requests, shortest first (ties:
    older first), from an index the caller keeps; without it the queue is searched."""
    if len(waiting) <= first + shortest:
        return waiting
    head = waiting[:first]
    if by_length is None:
        rest = heapq.nsmallest(shortest, enumerate(waiting[first:]),
                               key=lambda ir: (ir[1].prefill_len, ir[0]))
        return head + [r for _, r in rest]
    seen = set(map(id, head))
    return head + [r for r in by_length if id(r) not in seen][:shortest]


def _constants(req: Request, bs: int, w: LatencyWeights, cost: CostModel,
               factor: float) -> tuple:
    """What dispatch needs of a waiting request, fixed while it waits: (output_len it was
    computed at, prefill tokens, blocks of its prompt, worst-case blocks, decode steps at
    most + 1, waiting rate, patience: the wait after which the cost rule stops deferring it)."""
    total = req.expected_total_tokens()
    l = req.prefill_len
    out = max(1, total - req.prompt_len)
    return (req.output_len, l, -(-l // bs), -(-total // bs) + 1, out + 1, waiting_rate(req, w),
            factor * alone_time(cost, l, out))


def alone_time(cost: CostModel, prefill: int, output: int) -> float:
    """Seconds a request takes alone on one instance: its prefill, then ``output`` decode
    steps at its mid-output context."""
    return (cost.prefill_time(1, prefill, prefill * prefill)
            + output * cost.decode_time(1, 1, prefill + output / 2))


def forget(memo: dict, waiting: list[Request], running) -> None:
    """Drop what ``memo`` keeps of requests no longer waiting (or running), once it is big."""
    if len(memo) > 2 * len(waiting) + 256:
        keep = {r.req_id for r in waiting} | {"decode rates", "worst blocks"}
        for rid in [rid for rid in memo if rid not in keep]:
            del memo[rid]
    for key in ("decode rates", "worst blocks"):
        kept = memo.get(key)
        if kept is not None and len(kept) > 2 * len(running) + 256:
            memo[key] = {rid: v for rid, v in kept.items() if rid in running}


def _live(inp: DispatchInput, res: DispatchResult, bs: int) -> list[tuple[int, int]]:
    """``(steps until it ends at most, worst-case blocks)`` of running and admitted requests."""
    live = [(remaining_steps(r), worst_case_blocks(r, bs)) for r in inp.running.values()]
    live += [(expected_output(r) + 1, worst_case_blocks(r, bs)) for r in res.admitted]
    return live
