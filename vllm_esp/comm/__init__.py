"""ESP communicator: P2P ring shifts and master/peer exchange with byte counters."""

from vllm_esp.comm.communicator import ESPCommunicator, Pending
from vllm_esp.comm.group import find_free_port, init_esp_process_group

__all__ = ["ESPCommunicator", "Pending", "find_free_port", "init_esp_process_group"]
