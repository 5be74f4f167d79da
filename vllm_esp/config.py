"""ESP configuration: one validated, read-only dataclass.

The options reach vLLM through fields it already has (``additional_config["esp"]``), so they
survive every process hop vLLM makes (API server -> EngineCore -> workers) without patches.
This module imports nothing heavy: the CLI, ``vllm_esp.LLM`` and the planner all read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from vllm_esp import qualnames

EXECUTOR_QUALNAME = qualnames.EXECUTOR
SCHEDULER_QUALNAME = qualnames.SCHEDULER

# --executor choices: "esp" is ours, the rest are vLLM's own backends passed through.
EXECUTOR_CHOICES = ("esp", "mp", "uni", "ray")
# Queue policy inside each instance: fcfs = vLLM's own scheduler; sjf / alise = the
# length-aware scheduler of vllm_esp.scheduling (shortest predicted job first, + aging).
POLICY_CHOICES = ("fcfs", "sjf", "alise")
PREDICTOR_CHOICES = ("online", "retrieval", "oracle", "hint")
# How an instance's workers are started: mp = processes on this node (vLLM's MultiprocExecutor);
# ray = Ray actors in a placement group per instance, on any node of the Ray cluster
# (vLLM's RayExecutorV2).
INSTANCE_BACKEND_CHOICES = ("mp", "ray")
# --esp-admission: vLLM's per-instance schedulers, or the global manager's dispatching step
ADMISSION_CHOICES = ("vllm", "manager")


@dataclass(frozen=True)
class ESPConfig:
    """Options of the ESP executor and scheduler (``additional_config={"esp": {...}}``)."""

    instances: int = 1  # model replicas ("instances"), each with its own paged KV cache
    tp: int = 1  # tensor-parallel workers per instance (vLLM's normal TP)
    policy: str = "fcfs"  # queue order inside each instance's scheduler
    predictor: str | None = None  # output-length predictor of the sjf/alise policies
    cpu_bind: str | None = None  # per-worker core lists "0|1|..." (CPU only); None = even split
    instance_backend: str = "mp"  # mp (processes on this node) or ray (Ray actors, multi-node)
    # dotted path of the scheduler class run per instance (default: by policy)
    instance_scheduler: str | None = None
    # prefill a request spread over several instances on all of them in one step (sequence
    # parallel) when they have room; False = its chunks run one after another
    parallel_prefill: bool = True
    # run those parallel prefills as LoongServe's striped ring (balanced work, K/V around the
    # ring); False = each instance computes its own chunk and asks the earlier chunks' holders
    ring_prefill: bool = True
    # a spanning request whose instances are reserved by a parallel prefill that has not run
    # yet joins it (one ring for both, when every holder has room for both); False = it waits
    # for its own step (its chunks then run one after another)
    batch_rings: bool = True
    # cost profile (path of a `vllm-esp profile` JSON, or a built-in name): the global manager's
    # batching step then plans each step's new requests together (which share a ring prefill
    # over which instances, the KV kept on one instance when it fits; where the others go).
    # None = new requests go where there is most room; only prompts that outgrow one
    # instance's pool, or that ask for it, are spread
    profile: str | None = None
    # who admits new requests: vllm (each instance's scheduler, whatever fits now) or manager
    # (the global manager's dispatching rules: the KV all live requests hold at their end
    # must fit the pool, so decodes never run out of blocks; needs a profile)
    admission: str = "vllm"
    # multi-master decode: a spanning request whose master decodes more than this many
    # requests continues on the least loaded holder of its KV when its next token needs a
    # new block (LoongServe's mini-batch per master); 0 = masters change only by scale-up
    decode_minibatch: int = 16
    # every instance steps in lockstep with the others (each engine step waits for all of
    # them); False (default) = each instance, or group of instances linked by spread
    # requests, starts its next step as soon as its own ends (LoongServe's macro-iterations)
    lockstep: bool = False
    # the length-aware scheduler's options (``scheduling.config``), read from the same section
    # by ``from_dict``: one parse of additional_config["esp"] for the whole tree. Its policy is
    # ``policy`` when given, else "alise" (the length-aware scheduler named alone)
    scheduling: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not isinstance(self.instances, int) or self.instances < 1:
            raise ValueError(f"--esp-instances must be a positive integer, got {self.instances!r}")
        if not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"--esp-tp must be a positive integer, got {self.tp!r}")
        if self.policy not in POLICY_CHOICES:
            raise ValueError(
                f"--esp-policy must be one of {', '.join(POLICY_CHOICES)}, got {self.policy!r}"
            )
        if not isinstance(self.decode_minibatch, int) or isinstance(self.decode_minibatch, bool) \
                or self.decode_minibatch < 0:
            raise ValueError(f"esp.decode_minibatch must be a non-negative integer, "
                             f"got {self.decode_minibatch!r}")
        if self.admission not in ADMISSION_CHOICES:
            raise ValueError(f"--esp-admission must be one of {', '.join(ADMISSION_CHOICES)}, "
                             f"got {self.admission!r}")
        if self.admission == "manager" and self.profile is None:
            raise ValueError("--esp-admission manager needs a cost profile (--esp-profile)")
        if self.instance_backend not in INSTANCE_BACKEND_CHOICES:
            raise ValueError(f"--esp-instance-backend must be one of "
                             f"{', '.join(INSTANCE_BACKEND_CHOICES)}, got {self.instance_backend!r}")
        if self.profile is not None:
            if not isinstance(self.profile, str):
                raise ValueError(f"--esp-profile must be a path or a built-in profile name, "
                                 f"got {self.profile!r}")
            from vllm_esp.planner.prefill_groups import load_profile

            load_profile(self.profile)  # fails here, before any process starts
        if self.predictor is not None and self.predictor not in PREDICTOR_CHOICES:
            raise ValueError(f"--esp-predictor must be one of {', '.join(PREDICTOR_CHOICES)}, "
                             f"got {self.predictor!r}")

    @property
    def num_workers(self) -> int:
        return self.instances * self.tp

    def to_dict(self) -> dict[str, Any]:
        """Own options only (a section may carry scheduler options next to them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "scheduling" and getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "ESPConfig":
        """Read the ``esp`` section; it also holds the length-aware scheduler's options."""
        from vllm_esp.scheduling.config import SchedulingConfig

        raw = dict(raw or {})
        own = {f.name for f in fields(cls)}
        shared = {f.name for f in fields(SchedulingConfig)}
        unknown = sorted(set(raw) - own - shared)
        if unknown:
            raise ValueError(
                f"unknown ESP option(s) {unknown} in additional_config['esp']; "
                f"known: {sorted(own | shared)}"
            )
        cfg = cls(**{k: v for k, v in raw.items() if k in own and k != "scheduling"})
        scheduling = SchedulingConfig.from_dict({**raw, "policy": raw.get("policy", "alise")})
        object.__setattr__(cfg, "scheduling", scheduling)  # (frozen; own options checked)
        return cfg

    @classmethod
    def from_vllm_config(cls, vllm_config) -> "ESPConfig":
        extra = getattr(vllm_config, "additional_config", None) or {}
        cfg = cls.from_dict(extra.get("esp"))
        tp = vllm_config.parallel_config.tensor_parallel_size
        if cfg.tp != tp:
            # --esp-tp is a synonym of --tensor-parallel-size; both must agree.
            raise ValueError(
                f"ESP tp={cfg.tp} disagrees with tensor_parallel_size={tp}; "
                "set one of them (they mean the same thing)"
            )
        return cfg


def check_worker_limit(esp: ESPConfig, on_cpu: bool) -> None:
    """ValueError if ``esp`` needs more workers than this machine's cores / devices allow.

    Ray instances may run on other nodes: the Ray cluster's resources are checked instead,
    when the executor connects (``ray_instances.check_room``)."""
    if esp.instance_backend == "ray":
        return
    if on_cpu:
        limit = max_cpu_workers()
        if esp.num_workers > limit:
            raise ValueError(
                f"--esp-instances {esp.instances} x --esp-tp {esp.tp} = {esp.num_workers} "
                f"CPU workers exceed this machine's limit of {limit} "
                f"({len(os.sched_getaffinity(0))} cores x VLLM_ESP_CPU_OVERSUBSCRIBE)"
            )
        return
    from vllm.platforms import current_platform

    devices = current_platform.device_count()
    if esp.num_workers > devices:
        raise ValueError(
            f"--esp-instances {esp.instances} x --esp-tp {esp.tp} = {esp.num_workers} "
            f"devices needed, {devices} available"
        )


def max_cpu_workers() -> int:
    """How many ESP worker processes the CPU build may start on this machine.

    Each worker is bound to at least one core; sharing a core between two workers still
    runs correctly (tests use it) but more than VLLM_ESP_CPU_OVERSUBSCRIBE workers per core
    only makes everything slow, so it is refused at start.
    """
    from vllm_esp import envs

    return len(os.sched_getaffinity(0)) * envs.VLLM_ESP_CPU_OVERSUBSCRIBE
