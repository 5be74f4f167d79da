"""Tensor parallelism inside instances: --esp-instances 2 --esp-tp 2 (4 workers) = stock TP 2."""

from __future__ import annotations

import os

from vllm import SamplingParams

from vllm_esp.testing.engines import close_engine, make_engine

PROMPTS = ["Hello world", "The quick brown fox jumps", "Elastic sequence parallelism"] * 3


def _generate(llm):
    params = SamplingParams(temperature=0.0, max_tokens=16)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_two_instances_of_tp2_match_stock_tp2(tiny_models):
    llm = make_engine(tiny_models["llama"], 2, esp_tp=2)
    try:
        esp = _generate(llm)
        # one cross-instance group per TP rank: each worker hears from the other instance
        ring = llm.collective_rpc("esp_ring_shift", args=([5.0],))
    finally:
        close_engine(llm)
    assert ring == [[1.0, 5.0], [1.0, 5.0], [0.0, 5.0], [0.0, 5.0]]

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
