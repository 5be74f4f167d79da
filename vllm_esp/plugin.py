"""``vllm.general_plugins`` entry point: runs in every vLLM process, must be idempotent.

It applies the patches in ``vllm_esp_patches`` once per process. On a vLLM outside the
supported range it logs one error and leaves vLLM untouched (stock serving must keep working
in that environment); the ESP executor then refuses to start with the same message.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm_esp")

_registered = False
_error: Exception | None = None


def register() -> None:
    global _registered, _error
    if _registered:
        return
    _registered = True
    from vllm_esp_patches import UnsupportedVLLMVersion, apply_all

    try:
        applied = apply_all()
    except UnsupportedVLLMVersion as e:
        _error = e
        logger.error("vllm-esp disabled: %s", e)
        return
    if applied:
        logger.debug("vllm-esp patches applied: %s", ", ".join(applied))


def ensure_registered() -> None:
    """Apply the patches now, or raise why they cannot be (used by the ESP executor)."""
    register()
    if _error is not None:
        raise _error
