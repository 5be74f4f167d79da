"""Golden rule: same prompts, same seeds -> `executor="esp"` gives stock vLLM's output.

One workload per model (Llama- and Qwen2-shaped, float32): >= 32 requests with prompts from 1
to 2000 tokens, greedy with logprobs, seeded random sampling, n > 1, stop strings, stop tokens
and max_tokens. Each engine (stock, ESP with 1/2/3 instances) runs it once; engines are built
lazily and closed after their run, so a single selected test starts only the engines it needs.
"""

from __future__ import annotations

import random
import time

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.testing.engines import close_engine, make_engine

VOCAB = 512
LENGTHS = [1, 2, 3, 7, 16, 31, 64, 127, 128, 129, 255, 256, 257, 500, 777, 1000, 1500, 2000]


def _prompts(seed: int) -> list[TokensPrompt]:
    rng = random.Random(seed)
    lengths = LENGTHS + rng.sample(range(4, 600), 16)
    return [TokensPrompt(prompt_token_ids=[rng.randrange(8, VOCAB) for _ in range(n)])
            for n in lengths]


def _greedy_params(n_prompts: int) -> list[SamplingParams]:
    rng = random.Random(1)
    return [SamplingParams(temperature=0.0, max_tokens=rng.choice([1, 4, 8, 16, 24]), logprobs=3)
            for _ in range(n_prompts)]


SEEDED = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=100 + i, max_tokens=12)
          for i in range(8)]
MULTI = [SamplingParams(n=2, temperature=0.8, seed=7 + i, max_tokens=8) for i in range(4)]


def _stop_params(reference_greedy) -> list[SamplingParams]:
    """Stop strings / tokens taken from the stock run's own text, so they do trigger."""
    params = []
    for out in reference_greedy[14:18]:  # prompts of 500-2000 tokens, 1-24 new tokens
        c = out.outputs[0]
        ids = c.token_ids
        stop_tok = [ids[len(ids) // 2]] if len(ids) > 2 else []
        text = c.text
        stop_str = [text[len(text) // 2:len(text) // 2 + 2]] if len(text) > 4 else []
        params.append(SamplingParams(temperature=0.0, max_tokens=24, stop=stop_str,
                                     stop_token_ids=stop_tok, include_stop_str_in_output=False))
    return params


_cache: dict = {}


def run_workload(model_path: str, instances: int | None, stop_params=None) -> dict:
    """Run the workload on one engine; stock (stop_params None) derives the stop cases."""
    prompts = _prompts(0)
    llm = make_engine(model_path, instances)
    try:
        res = {
            "greedy": llm.generate(prompts, _greedy_params(len(prompts)), use_tqdm=False),
            "seeded": llm.generate(prompts[:8], SEEDED, use_tqdm=False),
            "multi": llm.generate(prompts[20:24], MULTI, use_tqdm=False),
        }
        res["stop_params"] = stop_params or _stop_params(res["greedy"])
        res["stop"] = llm.generate(prompts[14:18], res["stop_params"], use_tqdm=False)
        if instances and instances > 1:
            res["ring"] = llm.collective_rpc("esp_ring_shift", args=([0.0, 1.0],))
        return res
    finally:
        close_engine(llm)


@pytest.fixture(scope="module")
def golden(tiny_models):
    def get(model: str, instances: int | None):
        if (model, None) not in _cache:
            _cache[(model, None)] = run_workload(tiny_models[model], None)
        ref = _cache[(model, None)]
        if instances is not None and (model, instances) not in _cache:
            _cache[(model, instances)] = run_workload(
                tiny_models[model], instances, ref["stop_params"])
        return ref, _cache.get((model, instances))

    return get


def _assert_same_tokens(ref, got, what):
    assert len(ref) == len(got), what
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r.outputs) == len(g.outputs), f"{what}[{i}]: n differs"
        for rc, gc_ in zip(r.outputs, g.outputs):
            assert list(gc_.token_ids) == list(rc.token_ids), f"{what}[{i}] tokens differ"
            assert gc_.text == rc.text, f"{what}[{i}] text differs"
            assert gc_.finish_reason == rc.finish_reason, f"{what}[{i}] finish reason"
            assert gc_.stop_reason == rc.stop_reason, f"{what}[{i}] stop reason"


CASES = [(m, n) for m in ("llama", "qwen2") for n in (1, 2, 3)]


@pytest.mark.parametrize("model,instances", CASES)
def test_greedy_tokens_and_logprobs_match_stock(golden, model, instances):
    ref, got = golden(model, instances)
    _assert_same_tokens(ref["greedy"], got["greedy"], "greedy")
    for r, g in zip(ref["greedy"], got["greedy"]):
        rc, gc_ = r.outputs[0], g.outputs[0]
        for pos, (rl, gl) in enumerate(zip(rc.logprobs, gc_.logprobs)):
            tok = rc.token_ids[pos]
            assert gl[tok].logprob == pytest.approx(rl[tok].logprob, abs=1e-4)
        assert gc_.cumulative_logprob == pytest.approx(rc.cumulative_logprob, abs=1e-3)


@pytest.mark.parametrize("model,instances", CASES)
def test_seeded_sampling_and_n_match_stock(golden, model, instances):
    ref, got = golden(model, instances)
    _assert_same_tokens(ref["seeded"], got["seeded"], "seeded")
    _assert_same_tokens(ref["multi"], got["multi"], "n=2")
    assert all(len(o.outputs) == 2 for o in got["multi"])


@pytest.mark.parametrize("model,instances", CASES)
def test_stop_strings_tokens_and_max_tokens_match_stock(golden, model, instances):
    ref, got = golden(model, instances)
    _assert_same_tokens(ref["stop"], got["stop"], "stop")
    assert any(o.outputs[0].finish_reason == "stop" for o in ref["stop"]), "stops never fired"
    # max_tokens: every greedy request that did not stop produced exactly max_tokens
    for o, p in zip(got["greedy"], _greedy_params(len(got["greedy"]))):
        c = o.outputs[0]
        if c.finish_reason == "length":
            assert len(c.token_ids) == p.max_tokens


@pytest.mark.parametrize("instances", [2, 3])
def test_esp_communicator_ring_links_all_instances(golden, instances):
    _, got = golden("llama", instances)
    # worker of instance i receives its predecessor's id followed by the payload
    assert got["ring"] == [[float((i - 1) % instances), 0.0, 1.0] for i in range(instances)]


def test_no_engine_processes_left_after_shutdown(golden):
    """Deleting an ESP engine stops every instance's workers (no orphans)."""
    import psutil

    golden("llama", 2)  # runs (and closes) an ESP engine if not done yet
    deadline = time.monotonic() + 30
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "VLLM::" in p.name() + " ".join(p.cmdline())]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == []
