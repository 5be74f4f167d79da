"""Static-parallelism baselines: a vLLM-style continuous-batching engine on a fixed group.

One engine owns a fixed group of ``k`` instances (k=1: one TP instance, a data-parallel
replica; k=N: static sequence parallelism over everything, the stand-in for one big TP engine)
with one pooled KV cache of ``k × per-instance`` blocks. It implements vLLM V1's scheduling
rules, not a caricature of them:

* running requests first, in order: a decode needs 1 token, a partly prefilled prompt the next
  chunk; if their blocks run out, the most recently admitted running request is preempted
  (recompute: its KV is freed and it re-prefills prompt + generated tokens later);
* then waiting requests FCFS while the token budget and ``max_num_seqs`` allow; a new request
  is admitted only if the blocks for its first chunk are free (no preemption for admission);
* chunked prefill: prompts are cut to fit the per-iteration token budget and share the
  iteration with decodes (Sarathi / vLLM chunked prefill, DeepSpeed-MII SplitFuse), which is
  the default and the recommended setting of vLLM V1.

Cost of one iteration with prefill chunks ``(p_i, c_i)`` (``c_i`` new tokens after ``p_i``
cached ones) and decodes of contexts ``x_j`` on a TP group of ``k`` instances
(``CostModel.tp_mixed_time``: the ``k = 1`` coefficients with linear layers, attention, the
weight read and the per-request compute split over the ``k``-times larger group, plus the
all-reduces the group adds; ``planner/tp_group.py``)::

    T = max(A, D_k)·[both] + (B·Σc_i + C·Σ((p_i+c_i)² − p_i²))/k + (E·#decodes + F·Σx_j)/k
        + AR_k(Σc_i + #decodes)

Chunk attention costs what the missing part of the causal square costs, so the chunks of one
prompt add up to exactly one unchunked prefill (``B·l + C·l²``) plus per-iteration overheads —
chunking is charged its real price (repeated overheads and KV re-reads), nothing more.

Roles for disaggregation (DistServe-style): ``role="prefill"`` (still chunked by the budget, which
only adds per-chunk overheads) hands each request to ``decode_target`` after its first token, with the KV transfer time of the cost model;
``role="decode"`` receives prefilled requests, reserving blocks for ``max_tokens`` on
admission so it never preempts (a decode-side recompute would need a prefill it cannot do).
The prefill side keeps a request's KV blocks until the decode side admits it and pulls them
(vLLM's KV connectors work this way), so a backlog of prefilled requests waiting for decode
room fills the prefill instances' memory and throttles prefill, as it does on real hardware.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from vllm_esp.planner import CostModel, blocks_for
from vllm_esp.simulator.core import Handoff, Progress
from vllm_esp.workloads.types import Request


RELEASE = "release"  # hand-off state: the decode side has pulled the request's KV


def client_max_tokens(req: Request, cap: int | None) -> int:
    """``max_tokens`` a client sends for ``req``: its own output length when ``cap`` is None
    (benchmark clients with ``ignore_eos``), else ``cap`` (no system knows the true length)."""
    if cap is None:
        return req.output_len
    if req.output_len > cap:
        raise ValueError(f"request {req.request_id} generates {req.output_len} tokens, more "
                         f"than max_tokens={cap}")
    return cap


@dataclass(slots=True)
class _Seq:
    req: Request
    computed: int = 0  # tokens whose KV is stored
    generated: int = 0  # output tokens produced so far
    blocks: int = 0  # blocks held
    prefilling: bool = True  # False once prefill is done (until a preemption resets it)
    source: object = None  # decode role: the prefill engine still holding this KV

    @property
    def target_prefill(self) -> int:
        """Tokens a (re)prefill computes: the prompt plus every token generated before a
        preemption; afterwards ``computed == prompt + generated - 1`` (newest not in KV yet)."""
        return self.req.prompt_len + self.generated


class BatchingEngine:
    def __init__(self, name: str, cost: CostModel, k: int, blocks_per_instance: int,
                 block_size: int, token_budget: int = 8192, max_num_seqs: int = 256,
                 role: str = "both", decode_target=None, max_tokens: int | None = None):
        if role not in ("both", "prefill", "decode"):
            raise ValueError(f"unknown role {role!r}")
        self.max_tokens = max_tokens  # what clients send as max_tokens (None: each output)
        self.name, self.cost, self.k = name, cost, k
        self.block_size = block_size
        self.capacity = k * blocks_per_instance  # blocks, pooled over the group
        self.free = self.capacity
        self.token_budget, self.max_num_seqs = token_budget, max_num_seqs
        self.role, self.decode_target = role, decode_target
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self.held: dict[int, int] = {}  # prefill role: request -> blocks kept until pulled
        self.rejected: list[int] = []
        self.preemptions = 0  # recompute preemptions so far
        self._step: list[tuple[_Seq, int]] = []  # (seq, tokens scheduled) of the iteration

    # ---- queueing -----------------------------------------------------------------------
    def add(self, req: Request, now: float, state: object = None) -> None:
        if state == RELEASE:  # the decode side pulled this request's KV: free it here
            self.free += self.held.pop(req.request_id)
            return
        s = _Seq(req)
        if self.role == "decode":
            s.computed, s.generated, s.prefilling = req.prompt_len, 1, False
            s.source = state
        need = req.prompt_len + (self._cap(req) if self.role != "prefill" else 1)
        if blocks_for(need, self.block_size) > self.capacity:
            self.rejected.append(req.request_id)  # larger than the whole group: never served
            return
        self.waiting.append(s)

    def _cap(self, req: Request) -> int:
        """The request's ``max_tokens`` as the client sent it (the only output length a
        real engine knows); its true ``output_len`` only decides when it stops."""
        return client_max_tokens(req, self.max_tokens)

    def _grow(self, s: _Seq, tokens: int) -> bool:
        """Allocate blocks so ``s`` can store ``tokens`` more tokens; False if none are free."""
        need = blocks_for(s.computed + tokens, self.block_size) - s.blocks
        if need > self.free:
            return False
        self.free -= need
        s.blocks += need
        return True

    def _release(self, s: _Seq) -> None:
        self.free += s.blocks
        s.blocks = 0

    # ---- one iteration ------------------------------------------------------------------
    def start(self, now: float) -> float | None:
        budget = self.token_budget
        step: list[tuple[_Seq, int]] = []
        i = 0
        while i < len(self.running):  # running first; preempt from the back when out of blocks
            s = self.running[i]
            want = min(1 if not s.prefilling else s.target_prefill - s.computed, budget)
            if want <= 0:
                i += 1
                continue
            while not self._grow(s, want):
                victim = self.running.pop()
                self._release(victim)
                victim.computed, victim.prefilling = 0, True
                self.preemptions += 1
                self.waiting.appendleft(victim)
                if victim is s:
                    break
            else:
                step.append((s, want))
                budget -= want
                i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            s = self.waiting[0]
            if self.role == "decode":
                if not self._grow(s, self._cap(s.req)):  # reserve max_tokens up front
                    break
                self.waiting.popleft()
                self.running.append(s)
                step.append((s, 1))
                budget -= 1
                continue
            want = min(s.target_prefill - s.computed, budget)
            if not self._grow(s, want):
                break
            self.waiting.popleft()
            self.running.append(s)
            step.append((s, want))
            budget -= want
        if not step:
            return None
        self._step = step
        return now + max(self._time(step), 1e-9)

    def _time(self, step: list[tuple[_Seq, int]]) -> float:
        s1 = s2 = 0.0
        nd, ctx = 0, 0
        for s, n in step:
            if s.prefilling:
                p = s.computed
                s1 += n
                s2 += (p + n) ** 2 - p * p
            else:
                nd += 1
                ctx += s.computed
        return self.cost.tp_mixed_time(self.k, s1, s2, nd, ctx)

    def complete(self, now: float, progress: Progress) -> list[Handoff]:
        out: list[Handoff] = []
        for s, n in self._step:
            s.computed += n
            if s.prefilling:
                if s.computed < s.target_prefill:
                    continue  # more chunks to go
                s.prefilling = False
            s.generated += 1
            rid = s.req.request_id
            if s.generated == 1:
                progress.token(rid, now)
            if s.generated >= s.req.output_len:
                progress.done(rid, now)
            elif self.role == "prefill":
                xfer = self.cost.migration_time(s.computed)
                out.append(Handoff(now + xfer, self.decode_target, s.req, self))
                self.held[rid] = s.blocks  # kept until the decode side pulls the KV
                s.blocks = 0
            else:
                if s.source is not None:  # first decode step: the KV is here now
                    out.append(Handoff(now, s.source, s.req, RELEASE))
                    s.source = None
                continue
            self.running.remove(s)
            self._release(s)
        self._step = []
        return out
