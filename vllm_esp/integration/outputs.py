"""The step's data between ESPScheduler, EngineCore and ESPExecutor.

EngineCore passes the scheduler's output to the executor by reference and the executor's
output back to the scheduler untouched, so the per-instance pieces ride inside subclasses of
vLLM's own types: ``per_instance`` is authoritative; the merged base-class fields are a summary
for the code in between (EngineCore reads ``total_num_scheduled_tokens`` and the request lists
for its iteration stats). Instances see only their own ``SchedulerOutput`` - a plain vLLM one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
from vllm.v1.core.sched.output import CachedRequestData, GrammarOutput, SchedulerOutput
from vllm.v1.outputs import ModelRunnerOutput

from vllm_esp.ops.plan import ESPStepPlan


@dataclass
class ESPSchedulerOutput(SchedulerOutput):
    # one vLLM SchedulerOutput per instance, index = instance id
    per_instance: list[SchedulerOutput] = field(default_factory=list)
    # instances that start a step now (the others are still running theirs, or idle)
    launch: list[bool] = field(default_factory=list)
    # each launched instance's grammar bitmask for its sampling (structured output), or None
    grammars: list = field(default_factory=list)


@dataclass
class InstanceSchedulerOutput(SchedulerOutput):
    """What one instance's workers receive: vLLM's output of that instance's scheduler plus
    the step's ESP plan (the same on every instance; None when nothing spans instances)."""

    esp_plan: ESPStepPlan | None = None

    @classmethod
    def of(cls, out: SchedulerOutput, plan: ESPStepPlan | None) -> "InstanceSchedulerOutput":
        values = {f.name: getattr(out, f.name) for f in dataclasses.fields(SchedulerOutput)
                  if f.init}
        return cls(**values, esp_plan=plan)


def plan_of(scheduler_output) -> ESPStepPlan | None:
    """The ESP plan a worker got with its step (None on a plain vLLM step)."""
    return getattr(scheduler_output, "esp_plan", None)


@dataclass
class ESPModelRunnerOutput(ModelRunnerOutput):
    # the output of each instance for this step, index = instance id
    per_instance: list[ModelRunnerOutput] = field(default_factory=list)


def _merge_values(values: list):
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool):
        return any(present)
    if isinstance(first, int):
        return sum(present)
    if isinstance(first, list):
        return [x for v in present for x in v]
    if isinstance(first, set):
        return set().union(*present)
    if isinstance(first, dict):
        return {k: x for v in present for k, x in v.items()}
    if isinstance(first, CachedRequestData):
        return CachedRequestData(
            **{f.name: _merge_values([getattr(v, f.name) for v in present])
               for f in dataclasses.fields(CachedRequestData)}
        )
    return first


# Fields whose merge has no meaning across instances (per-KV-group block counts).
_PER_INSTANCE_ONLY = {"num_common_prefix_blocks"}


def merge_scheduler_outputs(outputs: list[SchedulerOutput]) -> ESPSchedulerOutput:
    merged = {}
    for f in dataclasses.fields(SchedulerOutput):
        values = [getattr(o, f.name) for o in outputs]
        merged[f.name] = values[0] if f.name in _PER_INSTANCE_ONLY else _merge_values(values)
    merged["scheduled_cached_reqs"] = merged["scheduled_cached_reqs"] or CachedRequestData.make_empty()
    return ESPSchedulerOutput(**merged, per_instance=list(outputs))


class _LostStep:
    """An instance's output for a step it did not complete (it died, or a peer died during a
    span exchange): the scheduler recomputes what the step was computing."""

    def __repr__(self) -> str:
        return "LOST_STEP"


LOST_STEP = _LostStep()


class _NotDone:
    """An instance's output for a tick in which its step is still running."""

    def __repr__(self) -> str:
        return "NOT_DONE"


NOT_DONE = _NotDone()


def merge_model_runner_outputs(outputs: list) -> ESPModelRunnerOutput:
    done = [o for o in outputs if o is not LOST_STEP and o is not NOT_DONE]
    req_ids = [r for o in done for r in o.req_ids]
    return ESPModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=[t for o in done for t in o.sampled_token_ids],
        per_instance=list(outputs),
    )


def merge_grammar_outputs(outputs: list[GrammarOutput | None]) -> GrammarOutput | None:
    present = [g for g in outputs if g is not None]
    if not present:
        return None
    drafts = None
    if all(g.num_acceptable_drafts is not None for g in present):
        drafts = [d for g in present for d in g.num_acceptable_drafts]
    return GrammarOutput(
        structured_output_request_ids=[r for g in present for r in g.structured_output_request_ids],
        grammar_bitmask=np.concatenate([g.grammar_bitmask for g in present], axis=0),
        num_acceptable_drafts=drafts,
    )


def split_grammar_output(
    grammar: GrammarOutput | None, per_instance: list[SchedulerOutput]
) -> list[GrammarOutput | None]:
    """Rows of the merged bitmask that belong to each instance's scheduled requests."""
    if grammar is None:
        return [None] * len(per_instance)
    result: list[GrammarOutput | None] = []
    for so in per_instance:
        rows = [i for i, r in enumerate(grammar.structured_output_request_ids)
                if r in so.num_scheduled_tokens]
        if not rows:
            result.append(None)
            continue
        drafts = grammar.num_acceptable_drafts
        result.append(GrammarOutput(
            structured_output_request_ids=[grammar.structured_output_request_ids[i] for i in rows],
            grammar_bitmask=grammar.grammar_bitmask[rows],
            num_acceptable_drafts=None if drafts is None else [drafts[i] for i in rows],
        ))
    return result


def merge_engine_core_outputs(merged: dict, client: int, eco) -> None:
    """Fold one instance's ``EngineCoreOutputs`` for ``client`` into the step's."""
    if client not in merged:
        merged[client] = eco
        return
    base = merged[client]
    base.outputs = list(base.outputs) + list(eco.outputs)
    if eco.finished_requests:
        base.finished_requests = (base.finished_requests or set()) | eco.finished_requests
    base.timestamp = max(base.timestamp, eco.timestamp or time.monotonic())
