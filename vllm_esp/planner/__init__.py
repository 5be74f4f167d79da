"""The ESP planner: cost model, distributed KV pool and the global manager (stdlib only).

Public API (stable; the simulator and the engine scheduler build on it):

* types: :class:`Request`, :class:`Instance`, :class:`IterationPlan` and its parts
  (:class:`PrefillBatch`, :class:`KeepRange`, :class:`DecodeBatch`, :class:`ScaleEvent`,
  :class:`Migration`);
* :class:`ClusterState` — requests, decode batches and the :class:`KVPool`; ``apply_plan``;
* :class:`CostModel` — prefill/decode/migration time; ``fit_linear3`` and JSON profiles;
* policies (``make_policy``): ``"esp"`` (the LoongServe global manager), ``"static_sp"``,
  ``"replicas"``; each has ``plan(state, now) -> IterationPlan``.

Nothing here imports torch, vllm or numpy (enforced by tests/planner/test_no_torch_import.py).
"""

from .cost_model import CostModel, Linear3, ProfileMeta, fit_linear3, load_builtin
from .kv_pool import KVPool, blocks_for
from .state import BatchState, ClusterState
from .types import (
    DecodeBatch,
    Instance,
    IterationPlan,
    KeepRange,
    Migration,
    PrefillBatch,
    Request,
    ScaleEvent,
)

__all__ = [
    "BatchState",
    "ClusterState",
    "CostModel",
    "DecodeBatch",
    "Instance",
    "IterationPlan",
    "KVPool",
    "KeepRange",
    "Linear3",
    "Migration",
    "PrefillBatch",
    "ProfileMeta",
    "Request",
    "ScaleEvent",
    "blocks_for",
    "fit_linear3",
    "load_builtin",
]
