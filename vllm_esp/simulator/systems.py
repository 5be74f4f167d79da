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
loongserve     LoongServe's own scheduler (planner policy ``loongserve``, a port of its router)
               in its execution model: lockstep decode steps, macro-iterations with greedy
               refill (loongserve_engine.py)
chunked        one engine on all N instances (a TP group of N·tp GPUs, pooled KV), vLLM-style
               chunked prefill with a token budget — vLLM / LightLLM-SplitFuse at TP=8
chunked_dp     N independent 1-instance chunked-prefill engines, round-robin (vLLM TP=2 × DP)
disagg         prefill engine on P instances + decode engine on N−P, KV sent over the link
               (DistServe-style prefill/decode disaggregation; P = N/2 by default)
=============  ===============================================================================

The batching systems take vLLM's serving token budget for the profile's GPU
(``serving_defaults``) unless ``ClusterSpec.token_budget`` says otherwise; ``chunked@8192``
(any batching system, ``@`` a budget in tokens) runs one with another budget, which is how a
budget sweep is spelled. Every system sees the same ``max_tokens`` per request
(``ClusterSpec.max_tokens``: None = each request's output length, as benchmark clients send
with ``ignore_eos``; an int = that cap for every request, so nobody knows true lengths).

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

SYSTEMS = ("esp", "esp_async", "loongserve", "static_sp", "replicas", "chunked", "chunked_dp",
           "disagg")
BATCHING = ("chunked", "chunked_dp", "disagg")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The hardware every system gets (identical across systems of one comparison)."""

    num_instances: int = 4  # model replicas (TP groups)
    kv_tokens_per_instance: int = 250_000  # KV capacity of one instance, tokens
    block_size: int = 16  # tokens per KV block
    token_budget: int | None = None  # tokens per chunked-prefill iteration (None: vLLM's)
    max_num_seqs: int | None = None  # running requests per batching engine (None: vLLM's)
    prefill_instances: int | None = None  # disagg: instances for prefill (default N/2)
    max_tokens: int | None = None  # max_tokens every client sends (None: its output length)

    @property
    def blocks_per_instance(self) -> int:
        return self.kv_tokens_per_instance // self.block_size


def serving_defaults(cost: CostModel) -> tuple[int, int]:
    """vLLM's ``(max_num_batched_tokens, max_num_seqs)`` for ``vllm serve`` on the profile's
    device (vllm/engine/arg_utils.py, ``get_batch_defaults``, vLLM 0.32): A100 and unknown
    GPUs 2048/256 (PR #17885: larger budgets cost A100 throughput), H100/H200-class 8192/1024,
    B200-class (>= 160 GB) 16384/1024, CPU 2048·world/128·world."""
    dev = cost.meta.device.lower()
    world = max(1, cost.meta.tp_size)
    if dev.startswith("cpu"):
        return 2048 * world, 128 * world
    if "a100" in dev:
        return 2048, 256
    if any(x in dev for x in ("b200", "b300", "gb200")):
        return 16384, 1024
    if any(x in dev for x in ("h100", "h200", "h800", "h20", "mi300", "mi325")):
        return 8192, 1024
    return 2048, 256


def parse_system(name: str) -> tuple[str, int | None]:
    """``"chunked@8192"`` -> ``("chunked", 8192)``; a budget only for batching systems."""
    base, _, budget = name.partition("@")
    if base not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    if not budget:
        return base, None
    if base not in BATCHING or not budget.isdigit() or int(budget) < 1:
        raise ValueError(f"{name!r}: '@<tokens>' sets the token budget of "
                         f"{', '.join(BATCHING)} only")
    return base, int(budget)


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
          keep_trace: bool = False, validate: bool = False,
          loongserve_cfg=None) -> tuple[list[Engine], Router]:
    """Fresh engines (no shared state with earlier runs) and the router of ``system``.
    ``manager_cfg`` configures the planner policies, ``loongserve_cfg`` (a
    ``LoongServeConfig``) the ``loongserve`` one."""
    from vllm_esp.planner.policies import make_policy  # lazy: keeps CLI --help light

    system, budget = parse_system(system)
    n, bpi, bs = spec.num_instances, spec.blocks_per_instance, spec.block_size
    planner = dict(keep_trace=keep_trace, validate=validate, max_tokens=spec.max_tokens)
    if system == "esp_async":
        from vllm_esp.simulator.async_engine import AsyncPlannerEngine

        e = AsyncPlannerEngine(system, make_policy("esp", cost, manager_cfg), cost, n, bpi, bs,
                               **planner)
        return [e], lambda r: e
    if system == "loongserve":
        from vllm_esp.simulator.loongserve_engine import LoongServeEngine

        e = LoongServeEngine(system, make_policy("loongserve", cost, loongserve_cfg), cost, n, bpi,
                             bs, **planner)
        return [e], lambda r: e
    if system in ("esp", "static_sp"):
        e = PlannerEngine(system, make_policy(system, cost, manager_cfg), cost, n, bpi, bs,
                          **planner)
        return [e], lambda r: e
    if system == "replicas":
        es = [PlannerEngine(f"replica{i}", make_policy("replicas", cost, manager_cfg), cost, 1,
                            bpi, bs, **planner) for i in range(n)]
        return es, round_robin(es)
    d_budget, d_seqs = serving_defaults(cost)
    batching = dict(token_budget=budget or spec.token_budget or d_budget,
                    max_num_seqs=spec.max_num_seqs or d_seqs, max_tokens=spec.max_tokens)
    if system == "chunked":
        e = BatchingEngine("chunked", cost, n, bpi, bs, **batching)
        return [e], lambda r: e
    if system == "chunked_dp":
        es = [BatchingEngine(f"chunked{i}", cost, 1, bpi, bs, **batching) for i in range(n)]
        return es, round_robin(es)
    p = spec.prefill_instances or max(1, n // 2)
    if not 0 < p < n:
        raise ValueError(f"disagg needs 0 < prefill_instances < {n}, got {p}")
    dec = BatchingEngine("decode", cost, n - p, bpi, bs, role="decode", **batching)
    pre = BatchingEngine("prefill", cost, p, bpi, bs, role="prefill", decode_target=dec,
                         **batching)
    return [pre, dec], lambda r: pre
