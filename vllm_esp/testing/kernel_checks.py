"""The span-attention backends against the dense oracle on any device (used by
``benchmarks/gpu_check.py`` on a GPU; ``tests/ops`` holds the same cases for the CPU)."""

from __future__ import annotations

import numpy as np
import torch

from vllm_esp.ops import FlashPagedKV, KeySegments, CpuPagedKV, keys, select, stripes
from vllm_esp.ops.reference import segments_reference_paged, segments_reference_ragged


def _ring_hops(sizes_per_request, r, device):
    k = len(sizes_per_request[0])
    pos = [stripes(s) for s in sizes_per_request]
    q_off = np.concatenate([[0], np.cumsum([len(p[r]) for p in pos])]).astype(int)
    hops = []
    for src in range(k):
        k_off = np.concatenate([[0], np.cumsum([len(p[src]) for p in pos])]).astype(int)
        hops.append(KeySegments([keys.by_position(int(q_off[x]), p[r], p[src],
                                                  k_start=int(k_off[x]))
                                 for x, p in enumerate(pos)], device))
    return hops, int(q_off[-1]), [int(sum(len(p[s]) for p in pos)) for s in range(k)]


def _error(got, ref) -> float:
    (o, l), (ro, rl) = got, ref
    if not torch.equal(torch.isneginf(l), torch.isneginf(rl)):
        return float("inf")
    fin = torch.isfinite(rl)
    return max(float((o.float() - ro.float()).abs().max()),
               float((l[fin] - rl[fin]).abs().max()) if fin.any() else 0.0)


def run_all(device: torch.device, backend: str, dtype: torch.dtype) -> list[dict]:
    """Ring hops (equal and weighted stripes) and paged partials (decode rows, full and
    causal chunks, an empty one) over GQA 1/4/8 and head_dim 64/128."""
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    rows = []
    g = torch.Generator().manual_seed(0)
    for gqa, d in ((1, 64), (4, 128), (8, 128)):
        hkv = 1 if gqa == 8 else 2
        layout_cls = CpuPagedKV if device.type == "cpu" else FlashPagedKV
        layout = layout_cls(hkv, d, 16, dtype) if layout_cls is CpuPagedKV else \
            layout_cls(hkv, d, 16, dtype, device)
        kernels = select(device, layout, override=backend)
        for sizes in ([[256, 256], [40, 40]], [[300, 200, 57], [9, 9, 9]]):
            hops, n_rows, shard = _ring_hops(sizes, 1, device)
            q = torch.randn(n_rows, hkv * gqa, d, generator=g).to(device, dtype)
            for src, segs in enumerate(hops):
                k = torch.randn(shard[src], hkv, d, generator=g).to(device, dtype)
                v = torch.randn(shard[src], hkv, d, generator=g).to(device, dtype)
                err = _error(kernels.ragged(q, k, v, segs, d ** -0.5),
                             segments_reference_ragged(q, k, v, segs, d ** -0.5))
                rows.append({"backend": kernels.name, "dtype": str(dtype), "case":
                             f"ring hop {sizes[0]} src {src} gqa {gqa} d {d}",
                             "max_err": err, "ok": err <= tol})
        lens = [0, 900, 300, 77]
        nb = sum(-(-n // 16) for n in lens) + 2
        cache = layout.allocate(nb)
        junk = torch.randn(nb * 16, hkv, d, generator=g).to(device, dtype)
        layout.write(cache, junk, -junk, torch.arange(nb * 16, device=device))
        perm = torch.randperm(nb, generator=g).tolist()
        blocks, used = [], 0
        for n in lens:
            m = max(1, -(-n // 16))
            blocks.append(perm[used:used + m])
            used += m
        segs = KeySegments([keys.full(0, 1, 0, block_ids=blocks[0]),
                            keys.full(1, 1, 900, block_ids=blocks[1]),
                            keys.full(2, 6, 300, block_ids=blocks[2]),
                            keys.causal(8, 77, 77, block_ids=blocks[3])], device)
        q = torch.randn(85, hkv * gqa, d, generator=g).to(device, dtype)
        err = _error(kernels.paged(q, cache, layout, segs, d ** -0.5),
                     segments_reference_paged(q, cache, layout, segs, d ** -0.5))
        rows.append({"backend": kernels.name, "dtype": str(dtype),
                     "case": f"paged partials gqa {gqa} d {d}", "max_err": err,
                     "ok": err <= tol})
    return rows
