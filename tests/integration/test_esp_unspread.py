"""A model whose attention span attention does not implement is served unspread, never
silently wrong (issues 16 and 17).

Gemma2-shaped (sliding-window and full layers, i.e. two KV-cache groups, attention and final
logit soft-capping), float32, two ESP instances. Requests that would be spread (the
``esp_instances`` hint, a long prompt) run whole on one instance each, as stock vLLM runs
them, and the outputs equal stock's; the engine says why at start-up.
"""

from __future__ import annotations

import random

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
from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model


def test_gemma2_shaped_model_is_served_unspread_and_equals_stock(tmp_path):
    model = make_tiny_model(tmp_path / "gemma2", TinyModelSpec(arch="gemma2", seed=2))
    rng = random.Random(3)
    lengths = [5, 300, 900, 1500, 64, 700]
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])
               for n in lengths]
    params = [SamplingParams(temperature=0.0 if i % 2 else 0.8, seed=i, max_tokens=10,
                             logprobs=2, prompt_logprobs=1 if i == 3 else None,
                             extra_args={"esp_instances": 2} if n >= 700 else None)
              for i, n in enumerate(lengths)]
    stock = generate_once(model, None, prompts, params)
    with engine_core_in_process():
        llm = make_engine(model, 2)
    try:
        sched = esp_scheduler(llm)
        assert not sched.spans.enabled
        out = llm.generate(prompts, params, use_tqdm=False)
        stats = sched.esp_stats()
    finally:
        close_engine(llm)
    assert stats["spanning_requests"] == 0 and stats["ring_prefills"] == 0
    assert_same_outputs(out, stock)
    for o, r in zip(out, stock):  # prompt logprobs too (request 3)
        if r.prompt_logprobs:
            assert [list(p or {}) for p in o.prompt_logprobs] == \
                [list(p or {}) for p in r.prompt_logprobs]
