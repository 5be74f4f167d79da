"""Step 1 — dispatching: which waiting requests start their prefill this iteration.

Scanned in queue order. A request ``r`` (prefill length ``l``) is admitted when all hold:

* **worst-case KV**: the blocks every running and admitted request would hold at its expected
  end (``Request.expected_total_tokens``: max_tokens, or the predicted output when a predictor
  ran) fit in ``admission_fraction`` of the pool — so decodes never need recompute preemption
  unless predictions are wrong. An empty system admits one request regardless, and a request
  whose prompt alone exceeds the pool is rejected;
* **KV now**: its prompt fits in the free blocks of the instances prefill may use — idle ones,
  plus decode batches paused for it (cheapest first: fewest normalised decode tokens per free
  block);
* **bounded prefill**: predicted prefill time ``≤ max_prefill_time`` and tokens
  ``≤ max_prefill_tokens`` (the first admitted request is exempt, or it would starve);
* **normalised slowdown**: what admitting ``r`` costs running decodes must not exceed what it
  saves ``r``, both in seconds per token. Cost: the extra prefill time ``ΔT`` times
  ``Σ 1/expected_output`` over paused decode requests (each one's per-output-token latency
  grows by ``ΔT/out``; newly paused ones by the whole prefill time). Gain: ``(wait so far +
  T_prefill) / l`` — waiting for the next chance costs at least one prefill, and the age term
  makes the rule starvation-free.

Bounded out-of-order: when ``r`` cannot be admitted, up to ``lookahead`` later requests may
still be, but a request passed over ``max_bypass`` times blocks everything behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost_model import CostModel
from .decode_plan import BatchView
from .kv_pool import blocks_for
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


def decode_weight(batch: BatchView, running: dict[str, Request]) -> float:
    """Σ 1/expected_output over a batch: latency per output token added per second of pause."""
    w = 0.0
    for rid in batch.req_ids:
        r = running[rid]
        w += 1.0 / max(1, r.expected_total_tokens() - r.prompt_len)
    return w


def worst_case_blocks(req: Request, block_size: int) -> int:
    return blocks_for(req.expected_total_tokens(), block_size) + 1  # +1: split over instances


def dispatch(inp: DispatchInput, cost: CostModel, cfg, bypass: dict[str, int]) -> DispatchResult:
    res = DispatchResult()
    bs = inp.block_size
    budget = int(cfg.admission_fraction * inp.capacity_blocks)
    worst = sum(worst_case_blocks(r, bs) for r in inp.running.values())
    pausable = sorted(
        inp.pausable,
        key=lambda b: (decode_weight(b, inp.running) / max(1, sum(inp.free[i] for i in b.instances)), b.batch_id),
    )
    n_inst = len(inp.idle)
    avail = sum(inp.free[i] for i in inp.idle)
    s1 = s2 = need = 0
    w_paused = 0.0
    t_cur = 0.0
    blocked: list[str] = []
    scanned_after_block = 0
    for req in inp.waiting:
        if blocked:
            if scanned_after_block >= cfg.lookahead or bypass.get(blocked[0], 0) >= cfg.max_bypass:
                break
            scanned_after_block += 1
        l = req.prefill_len
        r_need = blocks_for(l, bs)
        if blocks_for(l + 1, bs) > inp.capacity_blocks:
            res.rejected.append(req.req_id)
            continue
        empty = not inp.running and not res.admitted
        r_worst = worst_case_blocks(req, bs)
        ok = empty or worst + r_worst <= budget
        ok = ok and (not res.admitted or len(res.admitted) < cfg.max_prefill_requests)
        ok = ok and (not res.admitted or s1 + l <= cfg.max_prefill_tokens)
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
            w_new = sum(decode_weight(b, inp.running) for b in newly)
            slowdown = (t_new - t_cur) * w_paused + t_new * w_new
            gain = (max(0.0, inp.now - req.arrival_time) + t_new) / l
            ok = ok and gain >= slowdown
        if not ok:
            blocked.append(req.req_id)
            continue
        if blocked:
            bypass[blocked[0]] = bypass.get(blocked[0], 0) + 1
        res.admitted.append(req)
        res.paused.extend(newly)
        n_inst, avail = k, a
        s1, s2, need = s1 + l, s2 + l * l, need + r_need
        worst += r_worst
        w_paused += w_new
        t_cur = t_new
    for rid in [r.req_id for r in res.admitted]:
        bypass.pop(rid, None)
    return res


def prune_bypass(bypass: dict[str, int], waiting: list[Request]) -> dict[str, int]:
    """Forget the bypass counts of requests no longer waiting, once there are many."""
    if len(bypass) <= 2 * len(waiting) + 64:
        return bypass
    live = {r.req_id for r in waiting}
    return {k: v for k, v in bypass.items() if k in live}
