"""ESTIMATED cost-model profiles from FLOP and bandwidth arithmetic (no measurement).

These give the simulator defaults for GPUs we cannot run here. They are labelled
``source="estimated"`` and should be replaced by ``vllm-esp profile`` output on real hardware.

Derivation, for an instance = one TP group of ``tp`` GPUs, ESP group of ``k`` instances:

* prefill, linear layers: ``2·P`` FLOPs per token (P = non-embedding parameters), spread over
  ``k·tp`` GPUs at ``mfu_prefill`` of peak -> ``B_k = 2P / (k·tp·F·mfu)``;
* prefill, attention: causal QKᵀ and PV are ``4·L·H·d`` FLOPs per (query, key) pair, half the
  pairs are masked -> ``C_k = 2·L·H·d / (k·tp·F·mfu_attn)`` per token² (S2 = Σ l²);
* prefill overhead ``A_k = launch + L·(k−1)·hop_latency``: ring hops are latency-bound at small
  l, their volume is assumed overlapped with attention compute (LoongServe's overlap);
* decode: every master reads all weights once per iteration, masters run in parallel
  -> ``D_k = P·bytes / (tp·BW·bw_eff) + launch``; per request ``E_k = 2P / (tp·F·mfu_dec)``;
  KV reads are spread over the k instances -> ``F_k = kv_bytes_per_token / (k·tp·BW·bw_eff)``;
* a static TP group of k instances (the baselines, planner/tp_group.py): the decode constant
  splits into ``launch`` (fixed) and the weight read (split over the group); all-reduces move
  ``hidden × dtype`` bytes per token, twice per layer, at ``link·bw_eff`` per GPU with a ring
  latency of ``allreduce_base + allreduce_step·(g−2)`` (NCCL's LL protocol on NVLink: ~6 µs on
  2 GPUs, ~15 µs on 8);
* migration: ``kv_bytes_per_token = 2·L·kv_heads·d·dtype_bytes``, moved at the intra-node link
  bandwidth of ``tp`` GPU pairs in parallel (NVLink figure; use ~25 GB/s per GPU across nodes).

Device figures are vendor datasheet numbers (dense BF16, no sparsity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vllm_esp.planner.cost_model import CostModel, Linear3, ProfileMeta
from vllm_esp.planner.tp_group import TPGroupTerms


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int  # L
    heads: int  # H (query heads)
    kv_heads: int
    head_dim: int  # d
    params: float  # non-embedding parameters P


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    flops: float  # dense bf16 FLOP/s per GPU
    hbm: float  # bytes/s per GPU
    link: float  # bytes/s per GPU, one direction, to another instance


MODELS = {
    "llama-3-8b": ModelShape("meta-llama/Meta-Llama-3-8B", 32, 32, 8, 128, 6.98e9),
    "lwm-7b-1m": ModelShape("LargeWorldModel/LWM-Text-Chat-1M", 32, 32, 32, 128, 6.48e9),
    "llama-3-70b": ModelShape("meta-llama/Meta-Llama-3-70B", 80, 64, 8, 128, 68.5e9),
}
DEVICES = {
    "a100-80g": DeviceSpec("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12, 300e9),
    "h100-80g": DeviceSpec("NVIDIA H100-SXM5-80GB", 989e12, 3.35e12, 450e9),
}
SHIPPED = [("a100-80g", "lwm-7b-1m", 2), ("a100-80g", "llama-3-8b", 1),
           ("h100-80g", "llama-3-8b", 1), ("h100-80g", "llama-3-70b", 8)]


def estimate_profile(model: ModelShape, dev: DeviceSpec, tp: int, ks=(1, 2, 4, 8),
                     dtype_bytes: int = 2, mfu_prefill: float = 0.6, mfu_attn: float = 0.45,
                     mfu_decode: float = 0.3, bw_eff: float = 0.8, launch: float = 4e-3,
                     hop_latency: float = 20e-6, allreduce_base: float = 6e-6,
                     allreduce_step: float = 1.5e-6) -> CostModel:
    kv_bytes = 2 * model.layers * model.kv_heads * model.head_dim * dtype_bytes
    prefill, decode = {}, {}
    for k in ks:
        gpus = k * tp
        prefill[k] = Linear3(
            launch + model.layers * (k - 1) * hop_latency,
            2 * model.params / (gpus * dev.flops * mfu_prefill),
            2 * model.layers * model.heads * model.head_dim / (gpus * dev.flops * mfu_attn),
        )
        decode[k] = Linear3(
            launch + model.params * dtype_bytes / (tp * dev.hbm * bw_eff),
            2 * model.params / (tp * dev.flops * mfu_decode),
            kv_bytes / (gpus * dev.hbm * bw_eff),
        )
    meta = ProfileMeta(model.name, "bfloat16", tp, dev.name, "estimated",
                       "FLOP/bandwidth arithmetic, see vllm_esp/profiler/estimate.py; "
                       f"mfu_prefill={mfu_prefill} mfu_attn={mfu_attn} mfu_decode={mfu_decode} "
                       f"bw_eff={bw_eff} launch={launch}s hop_latency={hop_latency}s")
    tp_group = TPGroupTerms(launch, allreduce_base, allreduce_step,
                            model.heads * model.head_dim * dtype_bytes, 2 * model.layers,
                            dev.link * bw_eff)
    return CostModel(meta, prefill, decode, kv_bytes_per_token=kv_bytes,
                     migration_bandwidth=tp * dev.link, migration_latency=50e-6,
                     tp_group=tp_group)


def write_shipped(out_dir: Path) -> list[Path]:
    paths = []
    for dev, model, tp in SHIPPED:
        p = out_dir / f"estimated_{dev}_{model}_tp{tp}.json"
        estimate_profile(MODELS[model], DEVICES[dev], tp).save(p)
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write_shipped(Path(__file__).resolve().parents[1] / "planner" / "profiles"):
        print(p)
