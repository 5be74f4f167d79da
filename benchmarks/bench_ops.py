"""ESP attention ops on this CPU: ring prefill and distributed decode vs single-rank attention.

For k = 1, 2, 4 spawned ranks (gloo, one torch thread each) the *same total work* is split
over k ranks:

- prefill: a batch of requests (default 2 x 2048 tokens) striped over k ranks, one attention
  layer of ring prefill (with keep-range writes into vLLM's CPU paged layout);
- decode: B requests whose KV (default 4096 tokens each) is spread evenly over k ranks, every
  rank master of B/k requests; one layer of multi-master decode.

"single" is one process doing the whole layer with the same kernels (k = 1, no comm). Times
are the median over repetitions of the slowest rank's per-layer time; bytes are payload bytes
sent per layer summed over ranks. On a 2-core machine k = 4 oversubscribes the CPU, so the
k = 4 numbers measure overhead, not speed-up.

    python benchmarks/bench_ops.py [--prefill-lens 2048 2048] [--decode-ctx 4096] [--reps 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch


def _rank_main(rank, k, port, cfg, q_out):
    torch.set_num_threads(1)
    from vllm_esp.comm import ESPCommunicator, init_esp_process_group
    from vllm_esp.ops import (CpuPagedKV, DecodePlan, RingPrefillPlan,
                              distributed_decode_attention, ring_prefill_attention,
                              stripe_counts)

    pg = init_esp_process_group("127.0.0.1", port, rank, k, "gloo") if k > 1 else None
    comm = ESPCommunicator(pg, rank)
    hq, hkv, d, bs = cfg["hq"], cfg["hkv"], cfg["d"], 128
    dtype = torch.float32
    layout = CpuPagedKV(hkv, d, bs, dtype)
    g = torch.Generator().manual_seed(rank)
    group = list(range(k))

    def barrier():
        if pg is not None:
            pg.barrier().wait()

    # --- prefill: keep ranges = contiguous 1/k of every request on each rank
    lens = cfg["prefill_lens"]
    n_local = sum(stripe_counts(lens, k, rank))
    q = torch.randn(n_local, hq, d, generator=g)
    kk = torch.randn(n_local, hkv, d, generator=g)
    v = torch.randn(n_local, hkv, d, generator=g)
    ranges = [(rank * n // k, (rank + 1) * n // k) for n in lens]
    kept = sum(e - b for b, e in ranges)
    cache = layout.allocate((kept + bs - 1) // bs + 1)
    plan = RingPrefillPlan(group, rank, lens, ranges, torch.arange(kept))
    pre_t = []
    for _ in range(cfg["reps"] + 1):
        barrier()
        comm.reset_counters()
        t0 = time.perf_counter()
        ring_prefill_attention(q, kk, v, plan, comm, d ** -0.5, kv_cache=cache, kv_writer=layout)
        pre_t.append(time.perf_counter() - t0)
    pre_bytes = comm.bytes_sent

    # --- decode: every request's ctx tokens split evenly; masters round-robin
    B, ctx = cfg["decode_batch"], cfg["decode_ctx"]
    kv_lens = [[ctx // k + (1 if j < ctx % k else 0) for j in range(k)] for _ in range(B)]
    masters = [i % k for i in range(B)]
    per_req_blocks = (kv_lens[0][rank] + bs - 1) // bs
    dcache = layout.allocate(B * per_req_blocks + 1)
    for i in range(B):
        n = kv_lens[i][rank]
        slots = torch.arange(i * per_req_blocks * bs, i * per_req_blocks * bs + n)
        layout.write(dcache, torch.randn(n, hkv, d, generator=g),
                     torch.randn(n, hkv, d, generator=g), slots)
    bt = torch.arange(B * per_req_blocks, dtype=torch.int32).view(B, per_req_blocks)
    dplan = DecodePlan(group, rank, masters, kv_lens, bt)
    qd = torch.randn(len(dplan.requests_of(rank)), hq, d, generator=g)
    dec_t = []
    for _ in range(cfg["reps"] + 1):
        barrier()
        comm.reset_counters()
        t0 = time.perf_counter()
        distributed_decode_attention(qd, dcache, layout, dplan, comm, d ** -0.5)
        dec_t.append(time.perf_counter() - t0)
    q_out.put((rank, pre_t[1:], pre_bytes, dec_t[1:], comm.bytes_sent))


def run_k(k, cfg):
    from vllm_esp.comm import find_free_port

    ctx = mp.get_context("spawn")
    q_out = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, k, port, cfg, q_out)) for r in range(k)]
    for p in procs:
        p.start()
    res = [q_out.get(timeout=900) for _ in range(k)]
    for p in procs:
        p.join(timeout=60)
    pre = statistics.median(max(r[1][i] for r in res) for i in range(cfg["reps"]))
    dec = statistics.median(max(r[3][i] for r in res) for i in range(cfg["reps"]))
    return pre, sum(r[2] for r in res), dec, sum(r[4] for r in res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill-lens", type=int, nargs="+", default=[2048, 2048])
    ap.add_argument("--decode-ctx", type=int, default=4096)
    ap.add_argument("--decode-batch", type=int, default=8)
    ap.add_argument("--hq", type=int, default=8)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    cfg = dict(prefill_lens=args.prefill_lens, decode_ctx=args.decode_ctx,
               decode_batch=args.decode_batch, hq=args.hq, hkv=args.hkv, d=args.d,
               reps=args.reps)
    rows = [(k, *run_k(k, cfg)) for k in args.ks]
    base_pre = rows[0][1] if rows[0][0] == 1 else float("nan")
    base_dec = rows[0][3] if rows[0][0] == 1 else float("nan")
    print(f"cpu cores={os.cpu_count()} fp32 hq={args.hq} hkv={args.hkv} d={args.d} "
          f"prefill lens={args.prefill_lens} decode B={args.decode_batch} ctx={args.decode_ctx}")
    print("| k | prefill ms/layer | vs single | prefill bytes/layer | decode ms/layer "
          "| vs single | decode bytes/layer |")
    print("|---|---|---|---|---|---|---|")
    for k, pre, pb, dec, db in rows:
        print(f"| {k} | {pre * 1e3:.1f} | {base_pre / pre:.2f}x | {pb:,} | {dec * 1e3:.2f} "
              f"| {base_dec / dec:.2f}x | {db:,} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        os.makedirs(out_dir, exist_ok=True)
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ks = [r[0] for r in rows]
        ax[0].plot(ks, [r[1] * 1e3 for r in rows], "o-")
        ax[0].set(title="ring prefill (1 layer)", xlabel="k ranks", ylabel="ms")
        ax[1].plot(ks, [r[3] * 1e3 for r in rows], "o-")
        ax[1].set(title="distributed decode (1 layer)", xlabel="k ranks", ylabel="ms")
        fig.tight_layout()
        path = os.path.join(out_dir, "bench_ops.png")
        fig.savefig(path, dpi=100)
        print(f"plot: {path}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
