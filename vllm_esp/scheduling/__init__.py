"""Length-aware (ALISE-style) scheduling for vLLM.

``AliseScheduler`` (``--scheduler-cls vllm_esp.scheduling.AliseScheduler``) imports vLLM; the
config, priority estimator and quantization modules do not need the scheduler to be loaded.
"""

from vllm_esp.scheduling.config import POLICIES, SchedulingConfig

__all__ = ["POLICIES", "AliseScheduler", "SchedulingConfig", "SwapConnector"]


def __getattr__(name):
    if name == "AliseScheduler":
        from vllm_esp.scheduling.scheduler import AliseScheduler

        return AliseScheduler
    if name == "SwapConnector":
        from vllm_esp.scheduling.swap_connector import SwapConnector

        return SwapConnector
    raise AttributeError(f"module 'vllm_esp.scheduling' has no attribute {name!r}")
