"""Engine construction shared by tests and benchmarks: one place for the comparison settings.

Stock and ESP engines in a golden comparison must differ only in the executor, so both are
built here from the same keyword set.
"""

from __future__ import annotations

import contextlib
import gc
import os

MiB = 1 << 20

ENGINE_DEFAULTS = dict(
    dtype="float32",
    seed=0,
    enforce_eager=True,  # no torch.compile warm-up: ~20 s less per engine start on CPU
    max_model_len=4096,
    max_num_seqs=64,
    kv_cache_memory_bytes=64 * MiB,  # per worker; the tiny model needs 1 KiB per token
    enable_prefix_caching=False,
)


def make_engine(model: str, instances: int | None = None, **overrides):
    """A stock ``vllm.LLM`` (instances=None) or a ``vllm_esp.LLM`` with ESP instances."""
    kwargs = {**ENGINE_DEFAULTS, **overrides}
    if instances is None:
        from vllm import LLM

        return LLM(model, **kwargs)
    from vllm_esp import LLM

    return LLM(model, executor="esp", esp_instances=instances, **kwargs)


def close_engine(llm) -> None:
    """Stop the engine and its worker processes now (not at garbage collection)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


def generate_once(model: str, instances: int | None, prompts, params, **overrides):
    """Build an engine, run one ``generate`` and close it (e.g. a stock reference run)."""
    llm = make_engine(model, instances, **overrides)
    try:
        return llm.generate(prompts, params, use_tqdm=False)
    finally:
        close_engine(llm)


@contextlib.contextmanager
def engine_core_in_process(enabled: bool = True):
    """Engines built inside run their EngineCore in this process (``enabled``: its scheduler
    is inspectable, its errors surface here) or in its own process; the env is restored."""
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if enabled else "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def esp_scheduler(llm):
    """The ESPScheduler of an engine built under ``engine_core_in_process()``."""
    return llm.llm_engine.engine_core.engine_core.scheduler


def record_placements(scheduler) -> dict[str, list[int]]:
    """Request id (the engine's, with its suffix) -> the instances it was put on, in order
    (dispatch, then each scale-up or master move)."""
    placed: dict[str, list[int]] = {}
    assign = scheduler.pool.assign

    def recording_assign(request_id: str, instance: int) -> None:
        placed.setdefault(request_id, []).append(instance)
        assign(request_id, instance)

    scheduler.pool.assign = recording_assign
    return placed


def record_each_step(scheduler, probe) -> list:
    """``probe()``, appended after every step the scheduler finishes."""
    seen: list = []
    update = scheduler.update_from_output

    def recording_update(scheduler_output, model_runner_output):
        result = update(scheduler_output, model_runner_output)
        seen.append(probe())
        return result

    scheduler.update_from_output = recording_update
    return seen


def record_kv_usage(scheduler) -> list[list[int]]:
    """Per-instance used blocks, appended after every step the scheduler finishes."""
    return record_each_step(scheduler,
                            lambda: [u.used_blocks for u in scheduler.pool.usages()])
