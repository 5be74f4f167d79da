"""Plain data crossing the planner boundary (engine scheduler <-> planner <-> simulator).

Everything here is a ``@dataclass(slots=True)`` of ints, floats, strings, lists and dicts, so the
same objects are built by the vLLM scheduler adapter (from its ``Request`` objects and block
pools) and by the discrete-event simulator (from a workload trace). Units are in the field
comments: tokens, blocks, seconds, bytes.

Token accounting convention (shared by every consumer):
  * a *waiting* request holds no KV; its prefill computes ``prefill_len = prompt_len +
    output_len`` tokens (``output_len > 0`` only after a recompute preemption: vLLM recomputes
    the prompt and the tokens generated so far) and samples one token, so ``output_len += 1``;
  * a *running* request stores ``prompt_len + output_len - 1`` tokens: the newest sampled token
    is written to KV by the next decode iteration, on that iteration's master.

Invariants of an :class:`IterationPlan` (checked by ``planner.validate.validate_plan``, usable by
the engine as a debug assertion):
  * every instance appears in at most one batch (prefill or decode) per iteration;
  * each prefill request's keep ranges are disjoint and cover ``[0, prefill_len)`` exactly;
  * each request of a running decode batch has exactly one master, an instance of that batch;
  * applying the plan never needs more blocks on an instance than it has.

This module is the stable API: the simulator builds on it. Add fields with defaults; do not
rename or remove.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    """One generation request as the planner sees it (no token ids: lengths only)."""

    req_id: str
    prompt_len: int  # tokens in the prompt (prefill length l)
    max_output_len: int  # tokens: hard cap on generated tokens (max_tokens)
    arrival_time: float = 0.0  # seconds, same clock as the ``now`` passed to the planner
    output_len: int = 0  # tokens generated so far (0 while waiting)
    predicted_output_len: int | None = None  # tokens; expected total output, if a predictor ran

    @property
    def prefill_len(self) -> int:
        """Tokens a prefill of this (waiting) request computes and stores: l in the cost model."""
        return self.prompt_len + self.output_len

    @property
    def running_kv_tokens(self) -> int:
        """Tokens of KV held while running (the newest sampled token is not in KV yet)."""
        return self.prompt_len + self.output_len - 1

    def expected_total_tokens(self) -> int:
        """Worst-case/expected KV tokens at completion, used by admission control."""
        out = self.max_output_len
        if self.predicted_output_len is not None:
            out = min(out, max(self.predicted_output_len, self.output_len + 1))
        return self.prompt_len + out


@dataclass(slots=True)
class Instance:
    """One model replica (a TP group) with its own paged KV cache."""

    instance_id: int  # dense ids 0..N-1
    num_blocks: int  # KV blocks of this instance's cache


@dataclass(slots=True)
class KeepRange:
    """Prompt tokens ``[begin, end)`` of one request that ``instance_id`` stores after prefill."""

    instance_id: int
    begin: int  # token index, inclusive
    end: int  # token index, exclusive

    @property
    def num_tokens(self) -> int:
        return self.end - self.begin


@dataclass(slots=True)
class PrefillBatch:
    """One sequence-parallel prefill on an ESP group (ring attention over ``instances``)."""

    instances: list[int]  # ESP group in ring order: logical rank r = index in this list
    req_ids: list[str]  # requests prefilled together
    keep: dict[str, list[KeepRange]]  # req_id -> disjoint ranges covering [0, prefill_len)
    predicted_time: float = 0.0  # seconds, cost-model estimate of this prefill
    # After the prefill the requests decode in this batch (new id, or an existing batch they join
    # because their KV landed on its instances). Instances of ``instances`` that keep nothing and
    # belong to no decode batch are idle afterwards (scale down).
    decode_batch_id: int = -1


@dataclass(slots=True)
class DecodeBatch:
    """One multi-master decode iteration of a batch of running requests."""

    batch_id: int
    instances: list[int]  # ESP group: instances holding KV of these requests, or mastering
    masters: dict[str, int]  # req_id -> instance that runs the full model and stores the new KV
    predicted_time: float = 0.0  # seconds


@dataclass(slots=True)
class ScaleEvent:
    """A change of a decode batch's instance set decided this iteration (no KV moves)."""

    kind: str  # "up" (instances join), "down" (instances leave), "merge" (batches unite)
    batch_id: int  # the batch that grows/shrinks, or the surviving batch of a merge
    instances: list[int] = field(default_factory=list)  # instances added ("up") or removed
    merged_batch_ids: list[int] = field(default_factory=list)  # batches absorbed ("merge")


@dataclass(slots=True)
class Migration:
    """Compaction: move ``num_tokens`` of ``req_id``'s KV from ``src`` to ``dst`` (whole blocks)."""

    req_id: str
    src: int  # instance id
    dst: int  # instance id
    num_tokens: int  # tokens moved


@dataclass(slots=True)
class IterationPlan:
    """Everything the engine executes in one iteration; batches run concurrently."""

    prefill: list[PrefillBatch] = field(default_factory=list)
    decode: list[DecodeBatch] = field(default_factory=list)  # only batches that run this step
    scale_events: list[ScaleEvent] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)  # done before the batches run
    preempted: list[str] = field(default_factory=list)  # running -> waiting, KV freed, recompute
    rejected: list[str] = field(default_factory=list)  # can never fit in the pool (abort them)
    paused_batch_ids: list[int] = field(default_factory=list)  # decode batches idle this step
    predicted_time: float = 0.0  # seconds: migrations + the slowest concurrent batch

    def busy_instances(self) -> list[int]:
        """Instances used by some batch this iteration (each at most once if the plan is valid)."""
        out: list[int] = []
        for b in self.prefill:
            out.extend(b.instances)
        for d in self.decode:
            out.extend(d.instances)
        return out
