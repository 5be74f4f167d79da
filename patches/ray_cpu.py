"""Let vLLM's Ray executor (``RayExecutorV2``) place CPU workers.

ESP instances can be Ray actors (``--esp-instance-backend ray``): each instance is then vLLM's
own ``RayExecutorV2`` (a ``MultiprocExecutor`` whose workers are Ray actors in a placement
group, possibly on other nodes). On GPUs vLLM supports that as it is. The CPU platform declares
no Ray device (``ray_device_key = ""``), so vLLM refuses Ray there; this patch, applied only on
the CPU platform and only when Ray instances are asked for (it imports ray), makes three
changes:

* ``CpuPlatform.ray_device_key = "CPU"``: one Ray CPU per worker bundle.
* ``RayWorkerProc.get_node_and_physical_gpu_ids``: a CPU worker has no accelerator ids (Ray's
  ``get_accelerator_ids()`` has no "CPU" key).
* ``RayExecutorV2._get_actor_resource_kwargs``: no ``resources={"CPU": n}`` (Ray only takes
  CPUs as ``num_cpus``); the actor's CPU is its placement-group bundle.

The actors run it too, before vLLM loads any plugin: the ESP executor puts
``setup_ray_worker`` in each instance's runtime env as its ``worker_process_setup_hook``.
"""

from __future__ import annotations

from vllm_esp_patches._patching import Patch


def _install(module) -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return  # vLLM supports Ray on its device platforms as they are
    for name in ("RayWorkerProc", "RayExecutorV2"):
        if not isinstance(getattr(module, name, None), type):
            raise TypeError(f"vllm.v1.executor.ray_executor_v2.{name} moved; "
                            "the ESP ray_cpu patch needs review")
    if not hasattr(module.RayExecutorV2, "_get_actor_resource_kwargs"):
        raise TypeError("RayExecutorV2._get_actor_resource_kwargs moved; "
                        "the ESP ray_cpu patch needs review")
    ray = module.ray

    def get_node_and_physical_gpu_ids(self) -> tuple[str, list[int]]:
        return ray.get_runtime_context().get_node_id(), []

    type(current_platform).ray_device_key = "CPU"
    module.RayWorkerProc.get_node_and_physical_gpu_ids = get_node_and_physical_gpu_ids
    module.RayExecutorV2._get_actor_resource_kwargs = staticmethod(lambda: {"num_gpus": 0})


PATCH = Patch(
    name="ray_cpu",
    target="vllm.v1.executor.ray_executor_v2",
    install=_install,
    why="ESP Ray instances on the CPU build: vLLM's CPU platform declares no Ray device",
)


def setup_ray_worker() -> None:
    """Ray ``worker_process_setup_hook``: the same patch in every Ray worker process."""
    PATCH.apply()
