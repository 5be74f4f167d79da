"""The global manager's batching step: which new requests prefill together, where (stdlib).

Once per engine step, the requests that arrived since the last step (at most
``MAX_REQUESTS_PER_STEP``) are planned together by the planner's dynamic program
(``planner.batching.plan_groups``, the code the simulator drives): prompts sorted by length,
the instances that can take a parallel prefill next step sorted by free blocks, and the cost
profile ``T_prefill(k; S1, S2)``. Each group of the optimal batching is a run of prompts on a
run of instances: one instance means those prompts are dispatched there; k > 1 means they
are prefilled together by one ring over those k instances, each keeping its KV on the ring's
master when it fits (the engine's ``integration.spanning``). Profiles are loaded here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vllm_esp.planner.batching import plan_groups
from vllm_esp.planner.cost_model import CostModel, builtin_profiles, load_builtin


def load_profile(name_or_path: str) -> CostModel:
    """A profile JSON by path, or a built-in profile by name; a clear error otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return CostModel.load(path)
    if name_or_path in builtin_profiles():
        return load_builtin(name_or_path)
    raise ValueError(f"--esp-profile {name_or_path!r} is neither a file nor a built-in profile "
                     f"({', '.join(builtin_profiles())})")


MAX_REQUESTS_PER_STEP = 32  # bounds the DP (the simulator's ManagerConfig.max_prefill_requests)


@dataclass(frozen=True, slots=True)
class PrefillGroup:
    """Prompts prefilled together on instances (indices into the lists given to ``plan``)."""

    prompts: list[int]
    instances: list[int]
    time: float  # predicted prefill time, seconds


class PrefillPlanner:
    def __init__(self, cost: CostModel, block_size: int):
        self.cost = cost
        self.block_size = block_size
        # no more instances than the profile measured: its extrapolation beyond them assumes
        # ideal scaling (a k = 1 profile would otherwise spread every prompt)
        self.max_k = max(cost.prefill)

    def plan(self, prompt_tokens: list[int],
             free_blocks: list[int]) -> tuple[list[PrefillGroup], list[int]]:
        """The optimal batching of these prompts over instances with these free blocks
        (LoongServe's objective Σ T_group · Σ 1/l). Returns the groups and the prompts left
        out: when no batching fits the free blocks, the longest prompts are left out first
        (the caller queues them where there is most room)."""
        order = sorted(range(len(prompt_tokens)), key=lambda r: (prompt_tokens[r], r))
        order = [r for r in order if prompt_tokens[r] > 0]
        insts = sorted(range(len(free_blocks)), key=lambda i: (-free_blocks[i], i))
        left: list[int] = [r for r in range(len(prompt_tokens)) if prompt_tokens[r] < 1]
        while order and insts:
            _, groups = plan_groups([prompt_tokens[r] for r in order],
                                    [free_blocks[i] for i in insts], self.block_size,
                                    self.cost, max_group_size=self.max_k)
            if groups:
                return [PrefillGroup(order[g.r0:g.r1], insts[g.i0:g.i1], g.time)
                        for g in groups], left
            left.append(order.pop())
        return [], left + order
