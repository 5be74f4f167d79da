"""Options of the length-aware scheduler, read once from ``additional_config["esp"]``.

    --scheduler-cls vllm_esp.scheduling.AliseScheduler \
    --additional-config '{"esp": {"policy": "alise", "predictor": "retrieval",
                                  "predictor_options": {"trace_file": "past.jsonl"}}}'

Validated in ``__post_init__`` and never written afterwards (the scheduler builds a new config to
change policy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

POLICIES = ("fcfs", "sjf", "alise")
SWAP_MODES = ("off", "auto", "always")


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    # fcfs: stock order (the predictor still runs, for its metric). sjf: shortest estimated
    # remaining time first, no aging, no length-based preemption. alise: sjf + aging +
    # preemption of long running jobs by much shorter waiting ones.
    policy: str = "alise"
    predictor: str = "online"  # retrieval | online | oracle | hint
    predictor_options: dict = field(default_factory=dict)  # constructor keywords
    # Aging. A waiting request's score drops by aging_rate seconds per second waited; after
    # max_wait_s (absolute) it goes ahead of every non-starved request. If max_wait_s is None
    # the bound is max_wait_factor x the running mean latency of finished requests (never less
    # than min_max_wait_s), i.e. "no request waits more than a few multiples of the mean".
    # Bounded slowdown (max_slowdown = K, the default): instead, a request is starved once it
    # has waited max(min_max_wait_s, K x its own predicted total run time) (prefill of the
    # prompt + decode of the predicted output, re-predicted as it runs), capped by max_wait_s
    # if that is set; max_wait_factor is then unused. So short jobs may overtake long ones
    # during bursts while every wait stays bounded relative to the job's size. K = 9 is
    # processor sharing's mean wait per second of service at load 0.9, rho / (1 - rho): no
    # request is made to wait longer, relative to its size, than the "fair" policy would make
    # it wait on average at that load. max_slowdown None restores the absolute/adaptive rule.
    aging_rate: float = 0.1  # s of estimated work forgiven per s waited
    max_wait_s: float | None = None
    max_wait_factor: float = 4.0
    min_max_wait_s: float = 1.0
    max_slowdown: float | None = 9.0
    # Length-based preemption (alise only): a waiting request preempts the running request with
    # the longest remaining estimate when that estimate is > preempt_ratio x the waiting one's
    # total estimate. Anti-thrashing: a request that (re)started less than min_run_steps steps
    # ago, or was preempted max_preemptions times, is never chosen; at most
    # max_preemptions_per_step per step.
    # Cost-benefit rule on top of the ratio: the waiting candidate would otherwise wait
    # ``slot_wait`` (the shortest remaining time among the running jobs) for a slot; taking the
    # victim's slot saves that wait but delays the victim by the candidate's run time plus the
    # cost of putting the victim back (swap in/out or recompute, from the cost model) plus
    # ``preempt_overhead_s`` (None = one decode step). Preempt only if the saving is larger.
    preempt_ratio: float = 4.0
    preempt_overhead_s: float | None = None
    min_run_steps: int = 8
    max_preemptions: int = 3
    max_preemptions_per_step: int = 1
    # Memory management: on preemption keep the KV in host memory (needs the SwapConnector as
    # kv_transfer_config), choose swap vs recompute by estimated cost ("auto"), always swap, or
    # always recompute ("off"). swap_quantize stores int8 per token-head with float scales.
    swap: str = "auto"
    swap_quantize: bool = False
    swap_space_gib: float = 4.0  # host budget for swapped KV (per worker)
    host_bandwidth_gbs: float = 10.0  # copy bandwidth assumed by the swap cost (GB/s)
    # Execution-time model (seconds). Used when cost_profile (a planner CostModel json) is None.
    prefill_s_per_token: float = 2e-4
    decode_s_per_token: float = 2e-3
    decode_s_per_context_token: float = 1e-7
    cost_profile: str | None = None
    metrics_interval_s: float = 10.0  # how often the prediction error metric is published

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"esp.policy must be one of {POLICIES}, got {self.policy!r}")
        if self.swap not in SWAP_MODES:
            raise ValueError(f"esp.swap must be one of {SWAP_MODES}, got {self.swap!r}")
        if not isinstance(self.predictor_options, dict):
            raise ValueError("esp.predictor_options must be a JSON object")
        for name in ("aging_rate", "max_wait_factor", "min_max_wait_s", "swap_space_gib",
                     "prefill_s_per_token", "decode_s_per_token",
                     "decode_s_per_context_token", "metrics_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"esp.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_slowdown is not None and self.max_slowdown <= 0:
            raise ValueError(f"esp.max_slowdown must be > 0 or null, got {self.max_slowdown}")
        if self.max_wait_s is not None and self.max_wait_s <= 0:
            raise ValueError(f"esp.max_wait_s must be > 0, got {self.max_wait_s}")
        if self.preempt_overhead_s is not None and self.preempt_overhead_s < 0:
            raise ValueError(f"esp.preempt_overhead_s must be >= 0, got {self.preempt_overhead_s}")
        if self.preempt_ratio < 1:
            raise ValueError(f"esp.preempt_ratio must be >= 1, got {self.preempt_ratio}")
        if self.host_bandwidth_gbs <= 0:
            raise ValueError("esp.host_bandwidth_gbs must be > 0")
        for name in ("min_run_steps", "max_preemptions", "max_preemptions_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"esp.{name} must be >= 0")

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> "SchedulingConfig":
        """The ``"esp"`` section of additional_config; keys of other ESP components are ignored."""
        section = (additional_config or {}).get("esp", {}) if isinstance(
            additional_config, dict) else {}
        return cls.from_dict(section)

    @classmethod
    def from_dict(cls, d: dict) -> "SchedulingConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        # keys owned by other parts of vllm-esp (executor, planner) may share the section
        ours = {k: v for k, v in d.items() if k in names}
        return cls(**ours)

    def replace(self, **changes: Any) -> "SchedulingConfig":
        return dataclasses.replace(self, **changes)
