"""vLLM features under ``--executor esp``: correct (equal to stock) or refused, never silently
wrong (issue 17). One ESP engine of 2 instances, one stock engine, the tiny Llama (float32).

Requests that ask to be spread (the ``esp_instances`` hint) but carry a feature the spreading
cannot reproduce - prompt logprobs (the earlier chunks' rows live on other instances), a
LoRA adapter (the helper views would run the base weights), structured output - run whole on
one instance, as stock runs them, and equal stock. A plain hinted request is spread (and
equals stock too). Bad hints are refused with a ValueError naming the hint and its range.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.sampling_params import StructuredOutputsParams

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    make_engine,
)

SPREAD = {"esp_instances": 2}


def write_lora(path, model_dir, rank=4, seed=0):
    """A LoRA adapter for the tiny Llama's q/v projections, written by hand (PEFT format)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(seed)
    hidden, heads, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.head_dim
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        for proj, out in (("q_proj", heads * d), ("v_proj", kv * d)):
            pre = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{pre}.lora_A.weight"] = torch.randn(rank, hidden, generator=g) * 0.5
            tensors[f"{pre}.lora_B.weight"] = torch.randn(out, rank, generator=g) * 0.5
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj", "v_proj"],
        "bias": "none", "base_model_name_or_path": str(model_dir), "task_type": "CAUSAL_LM"}))
    return str(path)


def _prompt(rng, n):
    return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    model = tiny_models["llama"]
    lora = LoRARequest("tiny-lora", 1, write_lora(tmp_path_factory.mktemp("lora"), model))
    rng = random.Random(9)
    work = [  # (prompt, params, lora)
        (_prompt(rng, 900), SamplingParams(temperature=0.0, max_tokens=8, prompt_logprobs=2,
                                           logprobs=1, extra_args=SPREAD), None),
        (_prompt(rng, 700), SamplingParams(temperature=0.0, max_tokens=8, logprobs=1,
                                           extra_args=SPREAD), lora),
        (_prompt(rng, 800), SamplingParams(temperature=0.0, max_tokens=8, extra_args=SPREAD,
                                           structured_outputs=StructuredOutputsParams(
                                               regex="[a-z ]{4,12}")), None),
        (_prompt(rng, 750), SamplingParams(temperature=0.0, max_tokens=8, logprobs=1,
                                           extra_args=SPREAD), None),  # spread: the control
    ]
    kw = dict(enable_lora=True, max_lora_rank=8, max_loras=1)

    def generate(llm):
        # one request per call: vLLM's CPU LoRA logits path fails on a prompt-logprobs
        # request in a LoRA-enabled engine when its batch holds other requests (stock vLLM
        # too, depending on the batch)
        return [llm.generate([p], [sp], lora_request=[lr] if lr else None, use_tqdm=False)[0]
                for p, sp, lr in work]

    out = {}
    stock = make_engine(model, None, **kw)
    try:
        out["stock"] = generate(stock)
    finally:
        close_engine(stock)
    with engine_core_in_process():
        llm = make_engine(model, 2, **kw)
    try:
        sched = esp_scheduler(llm)
        placed = {}
        add = sched.spans.add

        def recording_add(request, **kw):
            placed[request.request_id] = request
            return add(request, **kw)

        sched.spans.add = recording_add
        out["esp"] = generate(llm)
        out["spread"] = len(placed)
        out["stats"] = sched.esp_stats()
        out["llm"] = llm
        yield out
    finally:
        close_engine(llm)


def test_features_the_spreading_cannot_reproduce_run_whole_and_equal_stock(runs):
    assert runs["spread"] == 1 and runs["stats"]["spanning_requests"] == 1  # the control only
    assert_same_outputs(runs["esp"], runs["stock"])
    for got, ref in zip(runs["esp"], runs["stock"]):
        assert got.outputs[0].text == ref.outputs[0].text


def test_prompt_logprobs_equal_stock(runs):
    got, ref = runs["esp"][0].prompt_logprobs, runs["stock"][0].prompt_logprobs
    assert len(got) == len(ref) == 900 and got[0] is None
    for g, r in zip(got[1:], ref[1:]):
        assert set(g) == set(r)
        for tok in r:
            assert abs(g[tok].logprob - r[tok].logprob) <= 1e-4


@pytest.mark.parametrize("hint", [{"esp_instances": "x"}, {"esp_instances": 0},
                                  {"esp_instances": 1.5}, {"esp_instances": 3},
                                  {"esp_instances": True}, {"esp_prefill_instances": -1},
                                  {"esp_prefill_instances": 99}])
def test_bad_hints_are_refused_naming_the_hint(runs, hint):
    name = next(iter(hint))
    with pytest.raises(ValueError, match=f"{name} must be an integer from 1 to 2"):
        runs["llm"].generate([TokensPrompt(prompt_token_ids=[5, 6, 7])],
                             SamplingParams(max_tokens=2, extra_args=hint), use_tqdm=False)
