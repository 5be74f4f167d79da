"""Span attention op time per token on this CPU: the engine's CPU backend vs the old dense
reference vs stock vLLM's CPU attention kernel on the same token count, one process.

    python benchmarks/bench_span_attention.py [--lengths 4096 16384 65536] [--hq 8 --hkv 2
        --d 128] [--threads 2] [--reps 2] [--old-max 16384]

Two workloads per context length T:

- prefill: a T-token prompt prefilled by a ring of ``--members`` instances (LoongServe's
  striped ring; every member's hops run here one after another, so the total is the whole
  prompt's causal attention, as stock computes it in one call). New: ``ops.cpu_attention``
  through ``keys.by_position``; old: the masked reference in blocks of 512 query rows (what
  the engine ran before); stock: ``cpu_attention_with_kv_cache`` over the prompt.
- decode: one query row over T tokens of paged KV (a peer's partial for a spread request).
  New: the tiled paged backend; old: gather the whole chunk, fp32 copy, GQA expansion, dense;
  stock: vLLM's decode over T tokens.

Times are medians over ``--reps`` (after a warm-up at the smallest length), per token (prefill)
or per step (decode); the ratio column is new / stock. "old" is skipped above ``--old-max``
(its score blocks grow with T). CPU figures: they show the kernels' overheads against
vLLM's own kernel on the same machine, not GPU speed. Writes
benchmarks/results/span_attention.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ring_new(q, k, v, members: int, scale: float):
    from vllm_esp.ops import KeySegments, keys, merge_partials, stripes
    from vllm_esp.ops.cpu_attention import ragged_attention

    pos = stripes([len(q) // members] * members)
    hops = [[KeySegments([keys.by_position(0, pos[r], pos[s])]) for s in range(members)]
            for r in range(members)]

    def run():
        for r in range(members):
            parts = [ragged_attention(q[pos[r]], k[pos[s]], v[pos[s]], hops[r][s], scale)
                     for s in range(members)]
            merge_partials(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]))
    return run


def ring_old(q, k, v, members: int, scale: float):
    """The engine's span attention before this change: masked reference, 512-row blocks."""
    from vllm_esp.ops import merge_partials, stripes
    from vllm_esp.ops.reference import masked_attention_with_lse

    pos = [torch.from_numpy(p) for p in stripes([len(q) // members] * members)]

    def hop(qr, qp, kk, vv, kp):
        out = torch.zeros_like(qr)
        lse = torch.full((qr.shape[1], qr.shape[0]), float("-inf"))
        for a in range(0, qr.shape[0], 512):
            b = min(a + 512, qr.shape[0])
            cut = int(torch.searchsorted(kp, qp[b - 1], right=True))
            if cut:
                mask = kp[:cut].unsqueeze(0) <= qp[a:b].unsqueeze(1)
                out[a:b], lse[:, a:b] = masked_attention_with_lse(qr[a:b], kk[:cut], vv[:cut],
                                                                  mask, scale)
        return out, lse

    def run():
        for r in range(members):
            parts = [hop(q[pos[r]], pos[r], k[pos[s]], v[pos[s]], pos[s]) for s in range(members)]
            merge_partials(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]))
    return run


def paged_cache(k, v, bs: int):
    from vllm_esp.ops import CpuPagedKV

    layout = CpuPagedKV(k.shape[1], k.shape[2], bs, k.dtype)
    nb = -(-len(k) // bs)
    cache = layout.allocate(nb)
    layout.write(cache, k, v, torch.arange(len(k)))
    return layout, cache, list(range(nb))


def stock(q, layout, cache, total: int, scale: float):
    """vLLM's CPU kernel: the last ``len(q)`` rows of a ``total``-token request, causal."""
    import vllm._custom_ops as ops

    n, hq, d = q.shape
    qsl = torch.tensor([0, n], dtype=torch.int32)
    seq = torch.tensor([total], dtype=torch.int32)
    meta = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=1, num_heads=hq, num_kv_heads=layout.num_kv_heads, head_dim=d, seq_lens=seq,
        dtype=q.dtype, query_start_loc=qsl, causal=True, sliding_window_size=-1,
        isa=layout.isa, enable_kv_split=False)
    kc, vc = layout._split(cache)
    table = torch.arange(cache.shape[0], dtype=torch.int32).unsqueeze(0)
    out = torch.empty_like(q)

    def run():
        ops.cpu_attention_with_kv_cache(
            query=q, key_cache=kc, value_cache=vc, output=out, query_start_loc=qsl,
            seq_lens=seq, scale=scale, causal=True, alibi_slopes=None, sliding_window=-1,
            block_table=table, softcap=0.0, scheduler_metadata=meta, s_aux=None)
    return run


def decode_new(q1, layout, cache, blocks, total, scale):
    from vllm_esp.ops import KeySegments, keys
    from vllm_esp.ops.cpu_attention import paged_attention

    segs = KeySegments([keys.full(0, 1, total, block_ids=blocks)])
    return lambda: paged_attention(q1, cache, layout, segs, scale)


def decode_old(q1, layout, cache, blocks, total, scale):
    from vllm_esp.ops.reference import masked_attention_with_lse

    ids = torch.tensor(blocks)

    def run():
        k, v = layout.gather(cache, ids)
        masked_attention_with_lse(q1, k[:total], v[:total],
                                  torch.ones(1, total, dtype=torch.bool), scale)
    return run


def measure(T: int, args) -> dict:
    g = torch.Generator().manual_seed(T)
    hq, hkv, d = args.hq, args.hkv, args.d
    T = T // args.members * args.members
    q = torch.randn(T, hq, d, generator=g)
    k, v = torch.randn(T, hkv, d, generator=g), torch.randn(T, hkv, d, generator=g)
    scale = d ** -0.5
    layout, cache, blocks = paged_cache(k, v, 128)
    row = {"tokens": T}
    row["prefill_new_us"] = timed(ring_new(q, k, v, args.members, scale), args.reps) / T * 1e6
    row["prefill_stock_us"] = timed(stock(q, layout, cache, T, scale), args.reps) / T * 1e6
    row["prefill_old_us"] = timed(ring_old(q, k, v, args.members, scale), args.reps) / T * 1e6 \
        if T <= args.old_max else None
    q1 = q[-1:].contiguous()
    row["decode_new_ms"] = timed(decode_new(q1, layout, cache, blocks, T, scale), 5) * 1e3
    row["decode_stock_ms"] = timed(stock(q1, layout, cache, T, scale), 5) * 1e3
    row["decode_old_ms"] = timed(decode_old(q1, layout, cache, blocks, T, scale), 5) * 1e3 \
        if T <= args.old_max * 4 else None
    return row


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--members", type=int, default=2, help="instances in the ring")
    ap.add_argument("--hq", type=int, default=8)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--old-max", type=int, default=16384,
                    help="longest prompt the old reference is timed on")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measure(min(args.lengths), args)  # warm-up
    rows = []
    for T in args.lengths:
        print(f"T = {T} ...", flush=True)
        rows.append(measure(T, args))
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"fp32, Hq={args.hq} Hkv={args.hkv} D={args.d}, {args.threads} threads, ring of "
             f"{args.members} (all hops in one process), medians of {args.reps}",
             "", "| tokens | prefill us/token new | old | stock | new/stock | decode ms new | "
             "old | stock | new/stock |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['prefill_new_us']:.2f} | {fmt(r['prefill_old_us'], '.2f')} "
            f"| {r['prefill_stock_us']:.2f} | {r['prefill_new_us'] / r['prefill_stock_us']:.2f}x "
            f"| {r['decode_new_ms']:.2f} | {fmt(r['decode_old_ms'], '.2f')} "
            f"| {r['decode_stock_ms']:.2f} | {r['decode_new_ms'] / r['decode_stock_ms']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "span_attention.md").write_text(table + "\n")
    (RESULTS / "span_attention.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                            indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [r["tokens"] for r in rows]
        for key, label in (("new", "ESP CPU backend"), ("old", "old reference"),
                           ("stock", "stock vLLM")):
            ys = [r[f"prefill_{key}_us"] for r in rows]
            ax[0].plot([x for x, y in zip(xs, ys) if y], [y for y in ys if y], "o-", label=label)
            ys = [r[f"decode_{key}_ms"] for r in rows]
            ax[1].plot([x for x, y in zip(xs, ys) if y], [y for y in ys if y], "o-", label=label)
        ax[0].set(title="ring prefill attention", xlabel="prompt tokens", ylabel="us / token",
                  xscale="log")
        ax[1].set(title="decode partial (1 row)", xlabel="context tokens", ylabel="ms",
                  xscale="log")
        ax[0].legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "span_attention.png", dpi=100)
        print(f"wrote {RESULTS / 'span_attention.png'}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
