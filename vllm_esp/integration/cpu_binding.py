"""Which cores each ESP worker's OpenMP threads bind to (CPU build only).

vLLM's CPU workers read ``VLLM_CPU_OMP_THREADS_BIND`` ("cores of local rank 0|cores of
rank 1|...") when their instance starts, and its "auto" mode wants one NUMA node per worker.
ESP starts several instances on one node, so it hands each instance its own slice: the user's
list (``--esp-cpu-bind`` or the env var, one entry per worker, instance-major), or an even
split of the allowed cores, wrapping around when there are more workers than cores.
"""

from __future__ import annotations

import os

from vllm_esp.config import ESPConfig


def _format(cores: list[int]) -> str:
    return ",".join(str(c) for c in cores)


def even_split(num_workers: int, cores: list[int]) -> list[str]:
    """Like vLLM's "auto" mode, keep one core for the engine process when there are spare
    cores (the scheduler and output processing run there; OpenMP threads sharing its core
    slow every step); split the rest evenly. More workers than cores: one core each, wrapping.
    """
    if num_workers < len(cores):
        cores = cores[:-1]
    if num_workers <= len(cores):
        per = len(cores) // num_workers
        return [_format(cores[w * per:(w + 1) * per]) for w in range(num_workers)]
    return [str(cores[w % len(cores)]) for w in range(num_workers)]


def per_instance(esp: ESPConfig, env: dict[str, str] | None = None) -> list[str]:
    """The ``VLLM_CPU_OMP_THREADS_BIND`` value for each instance."""
    env = os.environ if env is None else env
    spec = esp.cpu_bind or env.get("VLLM_CPU_OMP_THREADS_BIND")
    if spec == "nobind":
        return ["nobind"] * esp.instances
    if spec and spec != "auto":
        workers = spec.split("|")
        if len(workers) != esp.num_workers:
            raise ValueError(
                f"CPU bind list {spec!r} has {len(workers)} entries; ESP needs one per worker "
                f"({esp.instances} instances x {esp.tp} TP = {esp.num_workers})"
            )
    else:
        workers = even_split(esp.num_workers, sorted(os.sched_getaffinity(0)))
    return ["|".join(workers[i * esp.tp:(i + 1) * esp.tp]) for i in range(esp.instances)]


# what vLLM's OMPProcessManager.configure_omp_envs may set for a worker it spawns
OMP_KEYS = ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND", "KMP_AFFINITY", "KMP_BLOCKTIME",
            "KMP_TPAUSE", "GOMP_CPU_AFFINITY")


def omp_env(config, tp: int) -> dict[str, str]:
    """The OpenMP environment vLLM's process executor gives a worker it spawns with the
    ``VLLM_CPU_OMP_THREADS_BIND`` now set (the caller sets the instance's binding, as for its
    process instances).

    vLLM applies the binding when its ``MultiprocExecutor`` spawns a CPU worker (OpenMP reads
    it when the worker loads torch); Ray actors are not spawned by it, so a Ray instance's
    workers get it in their runtime env. One env serves all workers of an instance: with
    TP > 1 they only get the thread count (not the placement of rank 0's cores).
    """
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    with OMPProcessManager(config).configure_omp_envs(rank=0, local_rank=0):
        env = {k: os.environ[k] for k in OMP_KEYS if k in os.environ}
    return env if tp == 1 else {k: v for k, v in env.items() if k == "OMP_NUM_THREADS"}
