"""A tiny patch record: target, supported vLLM range, apply-once, loud version failure."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

# The vLLM releases vllm-esp is written against: [MIN, MAX). Each patch may narrow it.
MIN_VLLM = (0, 32)
MAX_VLLM = (0, 34)


class UnsupportedVLLMVersion(RuntimeError):
    """vLLM moved: the patched internals may not exist or mean something else."""


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as e:
        raise UnsupportedVLLMVersion(f"cannot parse vLLM version {version!r}") from e


def check_version(version: str, lo=MIN_VLLM, hi=MAX_VLLM, what: str = "vllm-esp") -> None:
    mm = _major_minor(version)
    if not (lo <= mm < hi):
        raise UnsupportedVLLMVersion(
            f"{what} supports vLLM >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}; found {version}. "
            "Install a supported vLLM (pip install 'vllm-esp[cuda]' or '[cpu]'), or set "
            "VLLM_ESP_SKIP_VERSION_CHECK=1 to try anyway."
        )


@dataclass
class Patch:
    """One patch of one vLLM symbol.

    Args:
        name: short id, also the attribute recorded on the target to refuse a second apply.
        target: "module:Class" or "module" whose attribute(s) ``install`` replaces.
        install: does the patching; receives the target object.
        why: one line shown in logs and docs.
        lo, hi: supported vLLM [lo, hi) as (major, minor).
    """

    name: str
    target: str
    install: Callable[[object], None]
    why: str
    lo: tuple[int, int] = MIN_VLLM
    hi: tuple[int, int] = MAX_VLLM
    applied: bool = field(default=False, init=False)

    def resolve(self) -> object:
        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj

    def apply(self, version: str | None = None) -> bool:
        """Apply once per process. Returns True if it was applied now."""
        from vllm_esp import envs

        if not envs.VLLM_ESP_SKIP_VERSION_CHECK:
            check_version(version or vllm_version(), self.lo, self.hi, f"patch {self.name}")
        obj = self.resolve()
        marker = f"_vllm_esp_patch_{self.name}"
        if getattr(obj, marker, False):
            self.applied = True
            return False
        self.install(obj)
        setattr(obj, marker, True)
        self.applied = True
        return True
