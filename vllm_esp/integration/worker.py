"""Methods ESP adds to every vLLM worker (``worker_extension_cls``).

vLLM mixes this class into its platform worker, so these run inside each worker process next
to its model runner and KV cache. The ESP executor calls them by name through
``collective_rpc``.
"""

from __future__ import annotations

import torch


class ESPWorkerExtension:
    esp_group = None  # torch ProcessGroup over the equal-TP-rank workers of all instances
    esp_rank: int = 0  # this worker's instance id inside esp_group
    esp_world: int = 1  # number of instances
    esp_device = torch.device("cpu")  # where the group's tensors live (cuda with NCCL)

    def esp_store_address(self) -> tuple[str, int]:
        """Where this worker can host its TP rank's group store: its node's address (Ray's
        view of it inside a Ray actor, which other nodes can reach) and a free port."""
        from vllm.utils.network_utils import get_ip, get_open_port

        host = get_ip()
        try:
            import ray

            if ray.is_initialized():
                host = ray.util.get_node_ip_address()
        except ImportError:
            pass
        return host, get_open_port()

    def esp_init_communicator(self, addresses: list[tuple[str, int]], instance: int,
                              num_instances: int, transport: str = "auto") -> str:
        """Join the cross-instance group of this worker's TP rank and warm it up.

        ``addresses[tp_rank]`` is the (host, port) of that group's store (instance 0 hosts it).
        ``transport``: ``auto`` = gloo on CPU, NCCL on GPU; ``gloo`` = gloo with device
        tensors staged through host memory (instances sharing a GPU: NCCL refuses two ranks
        on one device). The warm-up (one ring shift) makes NCCL allocate its communicator
        now, before the KV cache takes the device memory. Returns the transport used.
        """
        from vllm.distributed import get_tensor_model_parallel_rank
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        backend = "gloo" if on_cpu or transport == "gloo" else "nccl"
        tp_rank = get_tensor_model_parallel_rank()
        host, port = addresses[tp_rank]
        self.esp_group = stateless_init_torch_distributed_process_group(
            host, port, instance, num_instances, backend,
            group_name=f"vllm_esp_tp{tp_rank}",
        )
        self.esp_rank, self.esp_world = instance, num_instances
        if not on_cpu:
            self.esp_device = torch.device("cuda", torch.cuda.current_device())
        from vllm_esp.comm.communicator import ESPCommunicator
        from vllm_esp.integration import esp_step

        comm = ESPCommunicator(self.esp_group, instance, device=self.esp_device,
                               host_staging=backend == "gloo" and not on_cpu)
        esp_step.set_communicator(comm, instance, self.esp_device)
        self.esp_ring_shift([0.0])  # warm-up: the group's resources exist from now on
        return backend if not comm.host_staging else "gloo (host staging)"

    def esp_ring_shift(self, values: list[float]) -> list[float]:
        """Send ``[own instance id] + values`` to the next instance; return what arrived.

        A health check of the ESP communicator (one ring hop, as in ring prefill): instance i
        must receive ``[i - 1 mod N] + values``.
        """
        if self.esp_group is None:
            raise RuntimeError("ESP communicator not initialised (single instance?)")
        from vllm_esp.integration import esp_step

        comm = esp_step.communicator()[0]
        send = torch.tensor([float(self.esp_rank), *values], dtype=torch.float32,
                            device=self.esp_device)
        recv = torch.empty_like(send)
        nxt = (self.esp_rank + 1) % self.esp_world
        prv = (self.esp_rank - 1) % self.esp_world
        comm.exchange({nxt: [send]}, {prv: [recv]}, tag=2, op="health").wait()
        return recv.cpu().tolist()

    def esp_kv_cache_num_blocks(self) -> int:
        """Blocks in this worker's paged KV cache (first layer), for pool checks in tests."""
        caches = self.model_runner.kv_caches
        return int(caches[0].shape[0]) if caches else 0

    def esp_comm_bytes(self) -> dict[str, int]:
        """Bytes this worker sent over the ESP communicator, per op (span attention etc.)."""
        return _comm_counter("bytes_by_op")

    def esp_comm_calls(self) -> dict[str, int]:
        """Calls this worker made on the ESP communicator, per op (one per ring hop, etc.)."""
        return _comm_counter("calls_by_op")


def _comm_counter(name: str) -> dict[str, int]:
    """One per-op counter of this worker's ESP communicator ({} before it joined)."""
    from vllm_esp.integration import esp_step

    comm = esp_step.communicator()
    return dict(getattr(comm[0], name)) if comm is not None else {}
