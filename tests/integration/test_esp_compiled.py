"""``--executor esp`` without ``--enforce-eager`` (torch.compile on, as vLLM runs by default):
requests spread over both instances (ring prefill, decode exchange) and plain ones match
stock vLLM compiled the same way. The ESP attention runs inside vLLM's attention op, which the
compiled graph calls as an opaque splitting op."""

from __future__ import annotations

import random

from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import generate_once


def _workload():
    rng = random.Random(5)
    lengths = [3, 100, 700, 1200, 300, 900]
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])
               for n in lengths]
    params = []
    for i, n in enumerate(lengths):
        extra = {"esp_instances": 2} if n >= 700 else None  # spread: ring + exchange
        if i % 2:
            params.append(SamplingParams(temperature=0.0, max_tokens=12, logprobs=2,
                                         extra_args=extra))
        else:
            params.append(SamplingParams(temperature=0.9, seed=i, max_tokens=12,
                                         extra_args=extra))
    return prompts, params


def test_compiled_esp_equals_compiled_stock(tiny_models):
    model = tiny_models["llama"]
    prompts, params = _workload()
    stock = generate_once(model, None, prompts, params, enforce_eager=False)
    esp = generate_once(model, 2, prompts, params, enforce_eager=False)
    assert_same_outputs(esp, stock)
