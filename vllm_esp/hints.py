"""Per-request ESP hints in ``SamplingParams.extra_args`` (HTTP: ``vllm_xargs``).

- ``esp_instances: k``: spread the request's KV over ``k`` instances;
- ``esp_prefill_instances: k``: prefill it on ``k`` instances (a ring), its KV kept on one
  instance when it fits there.

``k`` is an integer from 1 to the number of instances. The API server checks them where vLLM
checks sampling parameters (``vllm_esp_patches.validate_hints``): a bad value is a 400 naming
the hint and its range, never a 500 and never silently clamped. Standard library only.
"""

from __future__ import annotations

HINTS = ("esp_instances", "esp_prefill_instances")


def check_hints(extra_args: dict | None, num_instances: int) -> None:
    """Raise ValueError (one line, naming the hint and its allowed range) for a bad hint."""
    for name in HINTS:
        if not extra_args or name not in extra_args:
            continue
        k = extra_args[name]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_instances:
            raise ValueError(f"{name} must be an integer from 1 to {num_instances} (the "
                             f"number of ESP instances), got {k!r}")


def requested(extra_args: dict | None, name: str) -> int:
    """The hint's value (1 = let ESP decide); a bad type raises ValueError."""
    k = (extra_args or {}).get(name, 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return k
