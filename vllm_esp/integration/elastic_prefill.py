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

    def joins_pending_ring(self, prompt_tokens: int, pending_tokens: list[int], k: int) -> bool:
        """Should a prompt that finds no instances free for its own parallel prefill join a
        ring over ``k`` instances that prefills ``pending_tokens`` in the next step?

        LoongServe's batching objective (the DP's Σ T_group · Σ 1/l: each prompt's prefill
        time per token) over the two choices left: one batched ring now, or the pending ring
        alone and then this prompt on its best k' <= k of those instances. The prompt must
        also fill a block per instance (the ring's equal chunks).
        """
        if not 2 <= k <= self.max_k or not pending_tokens \
                or prompt_tokens <= (k - 1) * self.block_size:
            return False
        t = self.cost.prefill_time
        s1, s2 = sum(pending_tokens), sum(x * x for x in pending_tokens)
        inv = sum(1.0 / x for x in pending_tokens)
        l = prompt_tokens
        joined = t(k, s1 + l, s2 + l * l) * (inv + 1.0 / l)
        alone = t(k, s1, s2)
        after = min(t(j, l, l * l) for j in self.cost.prefill if j <= k)
        return joined < alone * inv + (alone + after) / l
