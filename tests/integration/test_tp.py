"""Tensor parallelism inside instances: --esp-instances 2 --esp-tp 2 (4 workers) = stock TP 2."""

from __future__ import annotations

import os

from vllm import SamplingParams

from vllm_esp.testing.engines import close_engine, make_engine

PROMPTS = ["Hello world", "The quick brown fox jumps", "Elastic sequence parallelism"] * 3


LONG = "Elastic sequence parallelism spreads one long request over several instances. " * 40


def _generate(llm):
    params = SamplingParams(temperature=0.0, max_tokens=16)
    # the long prompt asks to be spread over both instances (ignored by stock vLLM): each TP
    # rank exchanges its own heads' queries and partial attention with the same rank there
    hinted = SamplingParams(temperature=0.0, max_tokens=16, extra_args={"esp_instances": 2})
    outs = llm.generate(PROMPTS + [LONG], [params] * len(PROMPTS) + [hinted], use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def test_two_instances_of_tp2_match_stock_tp2(tiny_models):
    llm = make_engine(tiny_models["llama"], 2, esp_tp=2)
    try:
        esp = _generate(llm)
        # one cross-instance group per TP rank: each worker hears from the other instance
        ring = llm.collective_rpc("esp_ring_shift", args=([5.0],))
        sent = llm.collective_rpc("esp_comm_bytes")
    finally:
        close_engine(llm)
    assert ring == [[1.0, 5.0], [1.0, 5.0], [0.0, 5.0], [0.0, 5.0]]
    # every worker (2 instances x 2 TP ranks) took part in the spanning request's attention
    assert all(b.get("span_query", 0) + b.get("span_partial", 0) > 0 for b in sent), sent

    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # stock "auto" wants a NUMA node per worker
    try:
        llm = make_engine(tiny_models["llama"], None, tensor_parallel_size=2,
                          distributed_executor_backend="mp")
        try:
            stock = _generate(llm)
        finally:
            close_engine(llm)
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND")
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old
    assert esp == stock
