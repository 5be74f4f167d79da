"""Shared builders for planner tests: hand-checkable cost models and small clusters."""

from __future__ import annotations

from vllm_esp.planner import ClusterState, CostModel, Instance, Linear3, ProfileMeta, Request


def cost_model(prefill=None, decode=None, kv_bytes=1000, bandwidth=1e6, ks=(1, 2, 3, 4, 8)):
    """Prefill ``A_k = 0.01·k``, ``B_k = 1e-4/k``, ``C_k = 0`` unless given: unimodal in k."""
    prefill = prefill or {k: Linear3(0.01 * k, 1e-4 / k, 0.0) for k in ks}
    decode = decode or {k: Linear3(0.01, 1e-3, 1e-6 / k) for k in ks}
    return CostModel(ProfileMeta("test", "float32", 1, "none", "estimated"), prefill, decode,
                     kv_bytes_per_token=kv_bytes, migration_bandwidth=bandwidth)


def cluster(blocks, block_size=16) -> ClusterState:
    return ClusterState([Instance(i, b) for i, b in enumerate(blocks)], block_size)


def req(rid, prompt, out=10, arrival=0.0, produced=0):
    return Request(rid, prompt, out, arrival_time=arrival, output_len=produced)


def make_running(state: ClusterState, batch_id: int, rid: str, placement: dict[int, int],
                 prompt: int | None = None, out: int = 100):
    """Put a running request with KV ``placement`` ({instance: tokens}) into ``batch_id``."""
    from vllm_esp.planner.state import BatchState

    total = sum(placement.values())
    prompt = prompt if prompt is not None else total
    r = Request(rid, prompt, out, output_len=total - prompt + 1)
    state.running[rid] = r
    for i, t in placement.items():
        state.pool.add(rid, i, t)
    b = state.batches.setdefault(batch_id, BatchState(batch_id))
    b.instances.update(placement)
    b.req_ids.append(rid)
    state.next_batch_id = max(state.next_batch_id, batch_id + 1)
    return r
