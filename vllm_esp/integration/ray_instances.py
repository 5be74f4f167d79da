"""ESP instances as Ray actors (``--esp-instance-backend ray``), for instances on several nodes.

An instance is then vLLM's own ``RayExecutorV2``: a ``MultiprocExecutor`` whose workers are Ray
actors in a placement group of their own (one bundle per TP worker), on whichever node of the
Ray cluster has room. The ESP executor drives it exactly like a process instance: same
message queues (shared memory on the engine's node, TCP from other nodes), same RPCs. Only the
ESP communicator's address differs: each TP rank's group store is hosted by instance 0's worker
on its own node (``ESPWorkerExtension.esp_store_address``).

The cluster is Ray's usual one: ``RAY_ADDRESS`` (or a cluster started with ``ray start`` on
this node), else a local Ray started here and stopped with the engine. Per-instance settings
(CPU binding, the GPU worker's environment) travel in the actors' runtime environment. On the
CPU build the ``ray_cpu`` patch lets vLLM place CPU workers; the actors apply it in Ray's
``worker_process_setup_hook``, before vLLM loads any plugin.
"""

from __future__ import annotations

import os

from vllm.logger import init_logger

logger = init_logger(__name__)

SETUP_HOOK = "vllm_esp_patches.ray_cpu.setup_ray_worker"
_initialized_here = False  # this process called ray.init (ray.shutdown is then ours)


def start(config, index: int, env: dict[str, str | None]):
    """Start instance ``index`` for ``config`` as Ray actors; ``env`` is set in its workers."""
    ray = _connect()
    # vLLM names its actors after the engine's instance id: give each ESP instance its own
    config.instance_id = f"{config.instance_id}-esp{index}"
    from vllm.platforms import current_platform
    from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

    runtime_env = dict(config.parallel_config.ray_runtime_env or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update({k: v for k, v in env.items() if v is not None})
    runtime_env["env_vars"] = env_vars
    if current_platform.is_cpu():
        runtime_env.setdefault("worker_process_setup_hook", SETUP_HOOK)
    config.parallel_config.ray_runtime_env = ray.runtime_env.RuntimeEnv(**runtime_env)
    return RayExecutorV2(config)


def check_room(num_workers: int) -> None:
    """ValueError if the Ray cluster has fewer worker slots (CPUs or GPUs) than ESP needs;
    otherwise vLLM would wait for the placement groups until its timeout."""
    ray = _connect()
    from vllm.platforms import current_platform

    key = current_platform.ray_device_key
    have = ray.cluster_resources().get(key, 0)
    if have < num_workers:
        raise ValueError(f"--esp-instances x --esp-tp = {num_workers} Ray workers need "
                         f"{num_workers} {key}s; the Ray cluster has {have:g}")


def stop() -> None:
    """Disconnect from Ray if this process connected; a local Ray started here stops with it,
    a cluster joined at RAY_ADDRESS keeps running."""
    global _initialized_here
    if not _initialized_here:
        return
    import ray

    ray.shutdown()
    _initialized_here = False


def _connect():
    global _initialized_here
    try:
        import ray
        import ray.runtime_env  # noqa: F401 - RuntimeEnv
    except ImportError:
        raise ValueError("--esp-instance-backend ray needs Ray: pip install ray") from None
    from vllm_esp_patches import ray_cpu

    ray_cpu.PATCH.apply()  # CPU build only; no-op on device platforms
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
        _initialized_here = True
        logger.info("ESP instances on Ray (%s): %s", address or "local cluster",
                    ray.cluster_resources())
    return ray
