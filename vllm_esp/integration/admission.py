"""The global manager's dispatching step in the engine (``--esp-admission manager``).

By default vLLM's per-instance schedulers admit whatever fits their free blocks now, and
recompute-preempt when decodes later outgrow the pool. With the manager's admission, new
requests wait in the ESP scheduler until the planner's dispatching rules
(``planner.dispatch.dispatch``, the code the simulator drives) admit them: the KV every live
request would hold at its end (prompt + ``max_tokens``, or prompt + a predicted output) must
fit the pool, the prompt must fit the free blocks now, and a request that does not fit yet gets
a reservation: later (shorter) requests pass it only when they end before its reserved start
or fit beside it then (EASY backfilling), so short requests keep flowing and the long one is
not starved. Decodes then never run out of blocks unless a prediction was wrong. Plain data,
no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_esp.planner.cost_model import CostModel
from vllm_esp.planner.dispatch import DispatchInput, dispatch
from vllm_esp.planner.manager import ManagerConfig
from vllm_esp.integration.cluster import planner_request


@dataclass
class Admission:
    cost: CostModel
    block_size: int
    cfg: ManagerConfig = field(default_factory=ManagerConfig)

    def admit(self, waiting: list, live: list, spare: dict[int, int], capacity_blocks: int,
              now: float) -> tuple[list, list]:
        """Which of ``waiting`` (vLLM requests, in arrival order) start now, given the
        ``live`` ones (admitted, not finished) and each instance's spare blocks. Returns
        (admitted, rejected) as vLLM requests; the rest keep waiting."""
        by_id = {r.request_id: r for r in waiting}
        queue = [planner_request(r) for r in waiting]
        res = dispatch(
            DispatchInput(queue, {r.request_id: planner_request(r) for r in live},
                          dict(spare), list(spare), [], capacity_blocks, self.block_size, now),
            self.cost, self.cfg)
        return [by_id[r.req_id] for r in res.admitted], [by_id[rid] for rid in res.rejected]
