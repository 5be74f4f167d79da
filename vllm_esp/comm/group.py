"""Creating the process group that carries ESP traffic between instances.

ESP traffic (ring shifts in prefill, query/partial exchange in decode) flows between equal
tensor-parallel ranks of *different* instances. Those processes already belong to vLLM's own
default world (their TP group), so the ESP group must not touch torch.distributed's global
state: we build a bare ``ProcessGroup`` object from a TCP store and talk to it directly
(``pg.send`` / ``pg.recv``), never through ``dist.isend`` which needs a registered group.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist

__all__ = ["init_esp_process_group", "find_free_port"]


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (tests and single-node launchers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_esp_process_group(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> dist.ProcessGroup:
    """Rendezvous ``world_size`` processes at ``host:port`` and return their group.

    Args:
        rank: this process's rank in the ESP world (one rank per instance, per TP rank).
        backend: "gloo" (CPU tensors) or "nccl" (CUDA tensors). NCCL goes through vLLM's
            stateless helper, imported only then, so the CPU path never imports vLLM.
    """
    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        return stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, backend="nccl", timeout=timeout
        )
    if backend != "gloo":
        raise ValueError(f"unsupported ESP backend {backend!r} (gloo or nccl)")
    store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
    prefix = dist.PrefixStore("vllm_esp", store)
    # The prefix store holds a reference to the TCP store, so the group keeps it alive.
    return dist.ProcessGroupGloo(prefix, rank, world_size, timeout)
