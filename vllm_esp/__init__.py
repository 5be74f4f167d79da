"""vllm-esp: elastic sequence parallelism for vLLM.

Importing this package is cheap: vLLM and torch are imported only when `LLM` is used.
"""

__version__ = "0.1.0"

__all__ = ["LLM", "__version__"]


def __getattr__(name):
    if name == "LLM":
        from vllm_esp.llm import LLM

        return LLM
    raise AttributeError(f"module 'vllm_esp' has no attribute {name!r}")
