"""One model-runner mode in every process (issue 16, defect 2).

The ESP workers run vLLM's V1 runner. vLLM's scheduler caches the runner mode when it is
built; in V2 mode (vLLM's default on CUDA with Triton, or VLLM_USE_V2_MODEL_RUNNER=1) it sends
a request resumed after a recompute preemption as new request data with its tokens so far,
which a V1 runner takes for a streaming update: the tokens diverge. Here the engine is started
in V2 mode (the environment variable, as a CUDA user would have it by default) on a workload
that preempts; ESP must put its schedulers and its workers in one mode, and the outputs must
equal stock vLLM's.
"""

from __future__ import annotations

import os

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)
from tests.integration.test_esp_admission import MAX_LEN, POOL, _workload


def test_engine_started_in_v2_mode_still_equals_stock_through_preemptions(tiny_models):
    import vllm.envs

    model = tiny_models["llama"]
    prompts, params = _workload()
    stock = generate_once(model, None, prompts, params, max_model_len=MAX_LEN,
                          kv_cache_memory_bytes=2 * POOL)
    saved = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")
    vllm.envs.disable_envs_cache()  # an earlier in-process engine may have frozen the env
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1"
    try:
        with engine_core_in_process():
            llm = make_engine(model, 2, kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN)
        try:
            sched = esp_scheduler(llm)
            assert not any(s.use_v2_model_runner for s in sched.instances)
            out = llm.generate(prompts, params, use_tqdm=False)
            preempted = sum(sched.esp_stats()["preemptions"])
        finally:
            close_engine(llm)
    finally:
        vllm.envs.disable_envs_cache()
        if saved is None:
            os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
        else:
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = saved
    assert preempted > 0  # the workload really preempts (recompute)
    assert_same_outputs(out, stock)
