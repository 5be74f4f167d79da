"""vllm-esp: elastic sequence parallelism for vLLM.

Importing this package is cheap: vLLM and torch are imported only when `LLM` is used.
"""

import logging as _logging

__version__ = "0.1.0"

# vLLM configures one logger, "vllm" (its handler, format and level: VLLM_LOGGING_LEVEL,
# --log-level, VLLM_LOGGING_CONFIG_PATH), in every process it starts; any other logger falls
# through to Python's root logger, which passes warnings only. vllm_esp's loggers hang below
# it, so their INFO lines appear (and are silenced) exactly as vLLM's own do.
_logging.getLogger("vllm_esp").parent = _logging.getLogger("vllm")

__all__ = ["LLM", "__version__"]


def __getattr__(name):
    if name == "LLM":
        from vllm_esp.llm import LLM

        return LLM
    raise AttributeError(f"module 'vllm_esp' has no attribute {name!r}")
