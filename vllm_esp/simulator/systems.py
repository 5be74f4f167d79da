"""Named deployments: ESP and the baselines, all on the same instances and the same cost model.

=============  ===============================================================================
system         deployment of the N instances
=============  ===============================================================================
esp            one engine, the production ESP global manager (planner policy ``esp``), lockstep
               iterations over all instances (how a vLLM executor steps)
esp_async      the same manager, but every ESP group runs on its own clock (LoongServe's model;
               see async_engine.py)
static_sp      one engine, planner policy ``static_sp``: every batch on all N instances
replicas       N independent engines of 1 instance, planner policy ``replicas``, round-robin
chunked        one engine on all N instances (static SP/TP group, pooled KV), vLLM-style chunked
               prefill with a token budget — the stand-in for vLLM / LightLLM-SplitFuse at TP=8
chunked_dp     N independent 1-instance chunked-prefill engines, round-robin (vLLM TP=2 × DP)
disagg         prefill engine on P instances + decode engine on N−P, KV sent over the link
               (DistServe-style prefill/decode disaggregation; P = N/2 by default)
=============  ===============================================================================

Planner policies make every decision of the planner systems; the simulator only executes plans.
Replicas are separate engines with separate iteration clocks (a real DP deployment is N
processes), not one lockstep engine, so a long prefill on one replica never stalls another.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_esp.planner import CostModel
from vllm_esp.simulator.batching_engine import BatchingEngine
from vllm_esp.simulator.core import Engine, Router, round_robin
from vllm_esp.simulator.planner_engine import PlannerEngine

SYSTEMS = ("esp", "esp_async", "static_sp", "replicas", "chunked", "chunked_dp", "disagg")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The hardware every system gets (identical across systems of one comparison)."""

    num_instances: int = 4  # model replicas (TP groups)
    kv_tokens_per_instance: int = 250_000  # KV capacity of one instance, tokens
    block_size: int = 16  # tokens per KV block
    token_budget: int = 16_384  # tokens per iteration of the chunked-prefill engines
    max_num_seqs: int = 256  # running requests per batching engine (vLLM max_num_seqs)
    prefill_instances: int | None = None  # disagg: instances for prefill (default N/2)

    @property
    def blocks_per_instance(self) -> int:
        return self.kv_tokens_per_instance // self.block_size


def kv_tokens_from_memory(cost: CostModel, gpu_mem_gb: float = 80.0, weights_gb: float = 13.5,
                          util: float = 0.9) -> int:
    """KV tokens one instance holds: ``tp × gpu_mem × util − weights`` over bytes per token.

    Defaults: 80 GB GPUs (A100/A800, the paper's), a 7B fp16 model (13.5 GB of weights per
    instance, i.e. per TP group), vLLM's default 0.9 memory utilisation. Activations are
    ignored (< 5% at these sizes).
    """
    tp = max(1, cost.meta.tp_size)
    free = tp * gpu_mem_gb * util - weights_gb
    return int(free * 1e9 // cost.kv_bytes_per_token)


def build(system: str, cost: CostModel, spec: ClusterSpec, manager_cfg=None,
          keep_trace: bool = False, validate: bool = False) -> tuple[list[Engine], Router]:
    """Fresh engines (no shared state with earlier runs) and the router of ``system``."""
    from vllm_esp.planner.policies import make_policy  # lazy: keeps CLI --help light

    n, bpi, bs = spec.num_instances, spec.blocks_per_instance, spec.block_size
    if system == "esp_async":
        from vllm_esp.simulator.async_engine import AsyncPlannerEngine

        e = AsyncPlannerEngine(system, make_policy("esp", cost, manager_cfg), cost, n, bpi, bs,
                               keep_trace, validate)
        return [e], lambda r: e
    if system in ("esp", "static_sp"):
        e = PlannerEngine(system, make_policy(system, cost, manager_cfg), cost, n, bpi, bs,
                          keep_trace, validate)
        return [e], lambda r: e
    if system == "replicas":
        es = [PlannerEngine(f"replica{i}", make_policy("replicas", cost, manager_cfg), cost, 1,
                            bpi, bs, keep_trace, validate) for i in range(n)]
        return es, round_robin(es)
    if system == "chunked":
        e = BatchingEngine("chunked", cost, n, bpi, bs, spec.token_budget, spec.max_num_seqs)
        return [e], lambda r: e
    if system == "chunked_dp":
        es = [BatchingEngine(f"chunked{i}", cost, 1, bpi, bs, spec.token_budget,
                             spec.max_num_seqs) for i in range(n)]
        return es, round_robin(es)
    if system == "disagg":
        p = spec.prefill_instances or max(1, n // 2)
        if not 0 < p < n:
            raise ValueError(f"disagg needs 0 < prefill_instances < {n}, got {p}")
        dec = BatchingEngine("decode", cost, n - p, bpi, bs, spec.token_budget,
                             spec.max_num_seqs, role="decode")
        pre = BatchingEngine("prefill", cost, p, bpi, bs, spec.token_budget, spec.max_num_seqs,
                             role="prefill", decode_target=dec)
        return [pre, dec], lambda r: pre
    raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
