"""Instances on their own clocks (issue 19): a long prefill on one instance never stalls the
decodes of another.

Two instances; a 7000-token prompt (one step: the token budget holds it) lands on instance 0,
six short requests on instance 1. With per-instance progress (the default) instance 1
completes several steps while instance 0's long step is still running - read from the
executor's own step timeline, not from sleeps - and every output equals stock vLLM's. The
lockstep switch (``esp.lockstep``), kept for comparison, shows the difference: there every
instance waits for the slowest (the other instance runs only the step launched with the long
one).
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)

KW = dict(max_model_len=8192, max_num_batched_tokens=8192)


def _workload():
    rng = random.Random(19)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(7000)])]
    params = [SamplingParams(temperature=0.0, max_tokens=4, logprobs=1)]
    for i in range(6):
        prompts.append(TokensPrompt(prompt_token_ids=[rng.randrange(8, 512)
                                                      for _ in range(rng.randint(20, 80))]))
        params.append(SamplingParams(temperature=0.0 if i % 2 else 0.8, seed=i, max_tokens=40,
                                     ignore_eos=True, logprobs=1 if i % 2 else None))
    return prompts, params


def _run(model, lockstep: bool):
    with engine_core_in_process():
        llm = make_engine(model, 2, additional_config={"esp": {"instances": 2,
                                                               "lockstep": lockstep}}, **KW)
    try:
        sched = esp_scheduler(llm)
        placed = {}
        dispatch = sched._dispatch

        def recording(request, among=None):
            dispatch(request, among)
            placed[request.request_id] = sched.pool.instance_of[request.request_id]

        sched._dispatch = recording
        out = llm.generate(*_workload(), use_tqdm=False)
        executor = llm.llm_engine.engine_core.engine_core.model_executor
        return out, list(executor.steps.log), placed
    finally:
        close_engine(llm)


def _inside(log, long_instance: int) -> tuple[float, int]:
    """The longest step of ``long_instance`` and how many steps of the other instances
    started and ended while it ran."""
    start, end = max(((s, e) for i, s, e, _ in log if i == long_instance),
                     key=lambda se: se[1] - se[0])
    inside = sum(1 for i, s, e, _ in log if i != long_instance and s >= start and e <= end)
    return end - start, inside


@pytest.fixture(scope="module")
def stock(tiny_models):
    return generate_once(tiny_models["llama"], None, *_workload(), **KW)


def test_short_requests_keep_stepping_during_a_long_prefill(tiny_models, stock):
    out, log, placed = _run(tiny_models["llama"], lockstep=False)
    long_instance = next(iter(placed.values()))  # the long prompt arrives (is placed) first
    assert any(v != long_instance for v in placed.values()), "every request on one instance"
    long_s, inside = _inside(log, long_instance)
    assert inside >= 2, (long_s, inside, log[:20])
    assert_same_outputs(out, stock)


def test_lockstep_switch_waits_for_the_slowest(tiny_models, stock):
    out, log, placed = _run(tiny_models["llama"], lockstep=True)
    _, inside = _inside(log, next(iter(placed.values())))
    assert inside <= 1  # only the step launched together with the long one
    assert_same_outputs(out, stock)
