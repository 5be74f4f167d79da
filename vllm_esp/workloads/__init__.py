"""Workloads shared by the simulator and real benchmark runs (standard library only)."""

from vllm_esp.workloads.arrivals import poisson, rate_sweep, unit_gaps
from vllm_esp.workloads.distributions import PowerLaw, TruncLogNormal
from vllm_esp.workloads.generators import BASE_SPECS, WORKLOADS, LengthSpec, generate
from vllm_esp.workloads.loaders import dump_jsonl, load_jsonl, load_sharegpt
from vllm_esp.workloads.types import Request, renumber

__all__ = [
    "BASE_SPECS", "WORKLOADS", "LengthSpec", "PowerLaw", "Request", "TruncLogNormal",
    "dump_jsonl", "generate", "load_jsonl", "load_sharegpt", "poisson", "rate_sweep",
    "renumber", "unit_gaps",
]
