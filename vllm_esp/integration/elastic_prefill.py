"""How many instances prefill a request: the global manager's batching step in the engine.

For each new request the planner's dynamic program (``planner.batching.plan_groups``) is run
over the instances that can take a parallel prefill in the next step (free blocks, most free
first) with the cost profile ``T_prefill(k; S1, S2)``. The group size it picks is the request's
prefill parallelism: with k > 1 the request is prefilled as a ring over k instances and its KV
is kept on one of them when it fits (``spanning.SpanManager``). Plain data, no torch.
"""

from __future__ import annotations

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


class PrefillPlanner:
    def __init__(self, cost: CostModel, block_size: int):
        self.cost = cost
        self.block_size = block_size
        # no more instances than the profile measured: its extrapolation beyond them assumes
        # ideal scaling (a k = 1 profile would otherwise spread every prompt)
        self.max_k = max(cost.prefill)

    def instances_for(self, prompt_tokens: int, free_blocks: list[int]) -> int:
        """Instances for one prompt, given the free blocks of the instances that could take
        part now. 1 when nothing better is predicted (or nothing fits)."""
        if prompt_tokens < 1 or len(free_blocks) < 2 or self.max_k < 2:
            return 1
        _, groups = plan_groups([prompt_tokens], sorted(free_blocks, reverse=True),
                                self.block_size, self.cost, max_group_size=self.max_k)
        return groups[0].i1 - groups[0].i0 if groups else 1
