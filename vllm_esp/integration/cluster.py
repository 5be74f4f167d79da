"""vLLM's state as the planner sees it (``planner.types``): the one translation module.

Every decision the engine takes from the planner (admission, prefill grouping, placement,
scale-up targets, master relief) is fed from here: vLLM requests become planner requests
(lengths only), the instances' pools become free / spare block counts.
"""

from __future__ import annotations

from vllm_esp.planner.types import Request as PlannerRequest


def planner_request(request) -> PlannerRequest:
    """A vLLM request as the planner sees it: lengths only."""
    return PlannerRequest(request.request_id, request.num_prompt_tokens, request.max_tokens,
                          arrival_time=request.arrival_time,
                          output_len=request.num_output_tokens)


def spare_blocks(spans, num_instances: int) -> dict[int, int]:
    """Free blocks per instance after its running requests' next step and its queue's need
    (never negative)."""
    return {i: max(0, spans.spare_blocks(i)) for i in range(num_instances)}


def pool_blocks(pool) -> int:
    """Usable blocks of all the instances' pools together."""
    return sum(pool.total_blocks(i) for i in range(pool.num_instances))
