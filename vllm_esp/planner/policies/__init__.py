"""Scheduling policies: plug-ins with ``plan(state: ClusterState, now: float) -> IterationPlan``.

* ``esp`` — the LoongServe global manager (:class:`~vllm_esp.planner.manager.GlobalManager`);
* ``static_sp`` — all instances always form one sequence-parallel group;
* ``replicas`` — independent per-instance replicas, round-robin data parallel;
* ``loongserve`` — LoongServe's own scheduler ported from its repository (the anchor ESP is
  measured against; its execution model lives in the simulator's loongserve_engine.py).

All share the KV accounting of :class:`ClusterState` and the cost model, so their plans are
compared on equal terms by the simulator and by the engine.
"""

from __future__ import annotations

from typing import Protocol

from ..cost_model import CostModel
from ..manager import GlobalManager, ManagerConfig
from ..state import ClusterState
from ..types import IterationPlan
from .loongserve import LoongServePolicy
from .loongserve_queue import EVAL_SETTINGS, LoongServeConfig
from .replicas import ReplicaPolicy
from .static_sp import StaticSPPolicy


class Policy(Protocol):
    name: str

    def plan(self, state: ClusterState, now: float) -> IterationPlan: ...


POLICIES = {"esp": GlobalManager, "static_sp": StaticSPPolicy, "replicas": ReplicaPolicy,
            "loongserve": LoongServePolicy}


def make_policy(name: str, cost: CostModel, cfg: ManagerConfig | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}") from None
    return cls(cost, cfg)


__all__ = ["EVAL_SETTINGS", "POLICIES", "Policy", "GlobalManager", "LoongServeConfig",
           "LoongServePolicy", "ManagerConfig", "ReplicaPolicy", "StaticSPPolicy", "make_policy"]
