"""``vllm_esp.LLM``: vLLM's offline ``LLM`` that also takes the ESP options.

Stock ``vllm.LLM(..., executor="esp")`` raises TypeError inside ``EngineArgs`` before any
plugin can act, so the keywords are translated here and everything else is vLLM's own class.
"""

from __future__ import annotations

from vllm import LLM as _VLLM_LLM

from vllm_esp.options import apply_to_kwargs


class LLM(_VLLM_LLM):
    """``LLM(model, executor="esp", esp_instances=N, esp_tp=T, esp_policy=...)``.

    Without ``executor`` it behaves exactly like ``vllm.LLM``. ``executor`` also accepts
    vLLM's own "mp", "uni" and "ray".
    """

    def __init__(self, model: str, **kwargs):
        super().__init__(model, **apply_to_kwargs(kwargs))
