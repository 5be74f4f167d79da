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

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)
from tests.integration.test_esp_admission import MAX_LEN, POOL, _workload


def test_engine_in_v2_mode_still_equals_stock_through_preemptions(tiny_models, monkeypatch):
    """vLLM's schedulers come up in V2 mode (as on CUDA, where V2 is the default; the CPU
    build refuses V2 outright, so the mode is set where vLLM caches it); the workers run V1
    (ESP's runner)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    model = tiny_models["llama"]
    prompts, params = _workload()
    stock = generate_once(model, None, prompts, params, max_model_len=MAX_LEN,
                          kv_cache_memory_bytes=2 * POOL)
    with engine_core_in_process():
        init = Scheduler.__init__

        def init_in_v2_mode(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.use_v2_model_runner = True

        with monkeypatch.context() as m:
            m.setattr(Scheduler, "__init__", init_in_v2_mode)
            llm = make_engine(model, 2, kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN)
    try:
        sched = esp_scheduler(llm)
        assert not any(s.use_v2_model_runner for s in sched.instances)
        out = llm.generate(prompts, params, use_tqdm=False)
        preempted = sum(sched.esp_stats()["preemptions"])
    finally:
        close_engine(llm)
    assert preempted > 0  # the workload really preempts (recompute)
    assert_same_outputs(out, stock)
