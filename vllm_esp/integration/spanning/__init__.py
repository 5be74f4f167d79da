"""Requests whose KV spans instances (``SpanManager``): one concept per module.

``request`` (the spanning request, the client's hints), ``views`` (the only code touching
vLLM scheduler / KV-manager / runner internals), ``room`` (room for a parallel prefill),
``plan_builder`` (the step's ESP plan), ``manager`` (placement, chunks, elastic decode,
recompute, release).
"""

from vllm_esp.integration.spanning.manager import SpanManager
from vllm_esp.integration.spanning.request import SHADOW_SUFFIX, SpanningRequest

__all__ = ["SHADOW_SUFFIX", "SpanManager", "SpanningRequest"]
