"""LoongServe's request queue: which waiting requests a macro-iteration (or a refill) admits.

A port of ``loongserve/longserve_server/router/req_queue.py`` (ReqQueue) of LoongServe's public
repository (github.com/LoongServe/LoongServe, commit f6e8fc1), read for its rules, written
afresh over this project's planner types and cost model (``CostModel.prefill_time`` plays its
``Profiler.predict``). Units: tokens, seconds.

* **Memory** (``fits``; ``_can_add_new_req``, LightLLM's estimate): each live request is
  ``(tokens held, tokens still to generate)`` with its ``max_tokens`` (``get_tuple_tokens``
  with ``router_token_ratio = 0``: always "busy", so the cap is ``max_new_tokens``). Sorted by
  tokens still to generate, descending, the KV peak if all decode from now on is
  ``max_i (cum_held_i + left_i·(i+1))``; it must fit ``N × max_total_token_num``, and at most
  ``running_max_req_size`` requests may be live.
* **Dispatch** (``admit``; ``generate_new_req_list``): in queue order. A request whose prefill
  fits the instances that could be idle after compaction is taken if its prefill there is
  not slower than on all ``N`` instances by more than the *estimated waiting time*
  (``max(10, max over running (mean output − generated, 0.1·generated))`` iterations ×
  ``avg_decoding_time``; the mean output length is learnt online from finished requests,
  512 before any). Otherwise it is "undecided": the undecided prefix is taken when the prefill
  of everything on all ``N`` instances, times ``Σ 1/generated`` over running requests, is at
  most the estimated waiting time times ``Σ 1/prompt`` over the undecided ones. Out-of-order
  admission skips requests that do not fit memory while ``num_ooe < max_num_ooe``; a batch
  larger than one request must finish within ``max_prefill_time``.
* **Refill** (``admit_greedy``; ``generate_greedy_req_list``): instances freed inside a
  macro-iteration take any waiting requests, in order, that fit their memory and whose prefill
  there ends before the macro-iteration does.

Deviation: LoongServe's undecided branch re-checks memory after appending an empty list and
slicing ``cache_len_list[:-0]``, which empties the running list (so later checks ignore every
running request); this port checks against running + admitted + undecided, as intended.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..cost_model import CostModel
from ..types import Request


@dataclass(slots=True)
class LoongServeConfig:
    """LoongServe's router arguments; defaults are those of its evaluation script
    (test/longserve/5-start-api-server.py) for ≤ 8 GPUs, units converted to seconds."""

    running_max_req_size: int = 1024  # live requests (per dataset: 1024, L/LV-Eval 256)
    max_num_ooe: int = 4  # consecutive out-of-order dispatches (ShareGPT 1, L/LV-Eval 8, Mixed 4)
    batch_max_tokens: int = 500_000  # tokens per prefill batch
    avg_decoding_time: float = 0.022  # s per decode iteration (its measured 22 ms)
    max_prefill_time: float = 5.0  # s, prefill batches of more than one request
    max_wait_tokens: int = 10  # decode steps between dispatch attempts
    min_comp_bound_decoding_batch_size: int = 128  # requests per decode master
    initial_mean_output: float = 512.0  # tokens: the online mean before any request finished


# per-dataset settings of LoongServe's evaluation (get_lightllm_params)
EVAL_SETTINGS = {
    "sharegpt": dict(running_max_req_size=1024, max_num_ooe=1),
    "leval": dict(running_max_req_size=256, max_num_ooe=8),
    "lveval": dict(running_max_req_size=256, max_num_ooe=8),
    "mixed": dict(running_max_req_size=1024, max_num_ooe=4),
}


def held_and_left(req: Request, waiting: bool) -> tuple[int, int]:
    """``get_tuple_tokens``: (tokens the request holds once admitted, tokens it may still add).
    A waiting request with output was offloaded (paused): it re-prefills prompt + output."""
    out = req.output_len
    if waiting:
        return req.prompt_len + out + 1, max(0, req.max_output_len - out - 2)
    return req.prompt_len + out, max(0, req.max_output_len - out - 1)


class MemoryEstimate:
    """LightLLM's peak-KV estimate over live requests, with trial insertions."""

    def __init__(self, items: list[tuple[int, int]], capacity: int):
        self.capacity = capacity  # tokens, all instances
        self.items = sorted((-left, held) for held, left in items)  # left descending

    def peak(self, extra: list[tuple[int, int]] = ()) -> int:
        items = self.items
        if extra:
            items = sorted(items + [(-left, held) for held, left in extra])
        peak = cum = 0
        for i, (neg_left, held) in enumerate(items):
            cum += held
            peak = max(peak, cum - neg_left * (i + 1))
        return peak

    def fits(self, extra: list[tuple[int, int]]) -> bool:
        return self.peak(extra) <= self.capacity

    def add(self, held: int, left: int) -> None:
        bisect.insort(self.items, (-left, held))

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class QueueView:
    """What the queue reads from the cluster at a dispatch (tokens per instance)."""

    waiting: list[Request]
    running: list[Request]
    used: dict[int, int]  # instance -> tokens held by live requests
    capacity: int  # max_total_token_num: tokens per instance


class RequestQueue:
    """Dispatch state that persists across steps: the out-of-order streak."""

    def __init__(self, cfg: LoongServeConfig):
        self.cfg = cfg
        self.num_ooe = 0

    def admit(self, q: QueueView, cost: CostModel, mean_output: float) -> list[Request]:
        """``generate_new_req_list``: requests to prefill in a new macro-iteration."""
        cfg = self.cfg
        paused = [r for r in q.waiting if r.output_len > 0]
        if len(q.running) + len(paused) >= cfg.running_max_req_size or not q.waiting:
            return []
        n, cap = len(q.used), q.capacity
        iters = 10.0
        inv_decode = 0.0
        for r in q.running:
            iters = max(iters, mean_output - r.output_len, 0.1 * r.output_len)
            inv_decode += 1.0 / max(1, r.output_len)
        wait_time = iters * cfg.avg_decoding_time
        used = sum(q.used.values())
        max_idle = n - (used + cap - 1) // cap
        isolated_tokens = cap * max_idle
        batch_max = min(cfg.batch_max_tokens, n * cap - used)
        mem = MemoryEstimate([held_and_left(r, False) for r in q.running], n * cap)
        n_paused = len(paused)

        def fits(extra):
            return mem.fits(extra) and len(mem) + len(extra) + n_paused <= cfg.running_max_req_size

        run: list[Request] = []
        undecided: list[Request] = []
        s1 = s2 = u1 = u2 = 0
        u_inv = 0.0
        take_undecided = 0
        can_undecide = True
        is_ooe, before_ooe = False, 0
        allow_ooe = self.num_ooe < cfg.max_num_ooe
        stop = False
        for req in q.waiting:
            l = req.prefill_len
            tup = held_and_left(req, True)
            if fits([tup]) and s1 + l <= batch_max:
                if (not undecided or allow_ooe) and s1 + l <= isolated_tokens:
                    t_cur = cost.prefill_time(max_idle, s1 + l, s2 + l * l)
                    t_best = cost.prefill_time(n, s1 + l, s2 + l * l)
                    in_time = t_cur <= cfg.max_prefill_time
                    if t_cur - t_best <= wait_time and (not run or in_time):
                        stop = stop or not in_time
                        if undecided and not is_ooe:
                            before_ooe, is_ooe = len(run), True
                        run.append(req)
                        mem.add(*tup)
                        s1, s2 = s1 + l, s2 + l * l
                        continue
                if can_undecide and fits([held_and_left(u, True) for u in undecided] + [tup]) \
                        and s1 + l + u1 <= batch_max:
                    undecided.append(req)
                    u1, u2, u_inv = u1 + l, u2 + l * l, u_inv + 1.0 / l
                    t_all = cost.prefill_time(n, s1 + u1, s2 + u2)
                    in_time = t_all <= cfg.max_prefill_time
                    if t_all * inv_decode <= wait_time * u_inv and \
                            (len(run) + len(undecided) == 1 or in_time):
                        stop = stop or not in_time
                        take_undecided = len(undecided)
                    continue
                can_undecide = False
            if allow_ooe and not stop:
                if not is_ooe:
                    before_ooe, is_ooe = len(run), True
                continue
            break
        run += undecided[:take_undecided]
        if run:
            self.num_ooe = self.num_ooe + 1 if is_ooe and before_ooe < len(run) else 0
        return run

    def admit_greedy(self, waiting: list[Request], instances: int, capacity: int,
                     left_time: float, cost: CostModel) -> list[Request]:
        """``generate_greedy_req_list``: refill of ``instances`` idle instances that must end
        within ``left_time`` seconds (memory counted on those instances only)."""
        cfg = self.cfg
        mem = MemoryEstimate([], instances * capacity)
        n_paused = sum(1 for r in waiting if r.output_len > 0)
        out: list[Request] = []
        s1 = s2 = 0
        for req in waiting:
            l = req.prefill_len
            tup = held_and_left(req, True)
            ok = mem.fits([tup]) and len(mem) + 1 + n_paused <= cfg.running_max_req_size
            if ok and s1 + l <= cfg.batch_max_tokens and \
                    cost.prefill_time(instances, s1 + l, s2 + l * l) <= left_time:
                out.append(req)
                mem.add(*tup)
                s1, s2 = s1 + l, s2 + l * l
                if req.output_len > 0:
                    n_paused -= 1
        return out
