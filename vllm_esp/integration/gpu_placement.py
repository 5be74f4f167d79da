"""Which GPUs each ESP instance's workers use (process instances on one node).

vLLM's GPU worker picks ``cuda:{local_rank}`` with local ranks ``0..tp-1``: an instance
started as its own ``MultiprocExecutor`` therefore lands on the first ``tp`` visible GPUs
unless its processes see only their own. The executor gives each instance its own
``CUDA_VISIBLE_DEVICES``: instance ``i`` takes GPUs ``[i*tp, (i+1)*tp)`` of the visible ones.
With fewer GPUs than ``instances * tp`` (a single-GPU machine trying ESP), instances share
GPU groups round-robin; each then gets its share of ``gpu_memory_utilization``, and the ESP
communicator runs over gloo with host staging (NCCL refuses two ranks on one device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["InstancePlacement", "place_instances", "visible_gpus"]


@dataclass(frozen=True, slots=True)
class InstancePlacement:
    devices: tuple[str, ...]  # this instance's CUDA_VISIBLE_DEVICES entries, TP rank order
    sharing: int  # instances on these devices (1 = its own GPUs)

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.devices)}


def visible_gpus() -> list[str]:
    """The engine's visible GPUs as ``CUDA_VISIBLE_DEVICES`` entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def place_instances(num_instances: int, tp: int, gpus: list[str]) -> list[InstancePlacement]:
    """Each instance's GPUs; raises ValueError (one line) when not even one instance fits."""
    if tp > len(gpus):
        raise ValueError(f"--executor esp: an instance of TP {tp} needs {tp} GPUs, "
                         f"{len(gpus)} visible")
    groups = len(gpus) // tp
    owner = [i % groups for i in range(num_instances)]
    return [InstancePlacement(tuple(gpus[g * tp:(g + 1) * tp]), owner.count(g)) for g in owner]
