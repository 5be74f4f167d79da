"""Parallel prefill of one long spanning prompt: striped ring vs query exchange, one run.

    python benchmarks/bench_ring_prefill.py [--instances 2,4] [--rounds 3] [--pool-mib 2]

Tiny random float32 Llama, ``--pool-mib`` of KV per instance (2 MiB = 15 usable blocks of 128
tokens, C = 1920). For N instances the prompt has 0.9·N·C tokens, so it spans all N and is
prefilled by all of them in one step. Two engines per N, identical but for
``esp.ring_prefill``:

- ``ring``: LoongServe's striped ring. Every instance computes an interleaved stripe of the
  prompt; K/V shards go around the ring once per layer; each keeps its own chunk's K/V.
- ``exchange``: each instance computes its own contiguous chunk and sends its queries to the
  holders of the earlier chunks, which return partial attention (output + LSE).

Per round and engine: one request with 1 output token (so the time is the prefill), timed
around ``LLM.generate``, plus the span bytes the plan counted for it. Engines alternate, their
order reversed every other round; the table shows medians. Both engines' tokens must equal.
The engine core runs in this process (its scheduler's byte counter is read); the instances'
workers run in their own processes as always.

CPU figures on a 2-core machine where N instances share the same 2 cores: they show the
work and traffic each scheme does, not GPU speed-ups.
Writes benchmarks/results/ring_prefill.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

MiB = 1 << 20
BLOCK = 128
MODES = {"ring": True, "exchange": False}


def capacity_tokens(pool_bytes: int) -> int:
    """Usable tokens of one instance's pool (1 KiB per token): whole blocks minus the null."""
    return (pool_bytes // (1024 * BLOCK) - 1) * BLOCK


def run_engine(model: str, n: int, ring: bool, prompt: list[int], pool: int) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_esp.testing.engines import (
        close_engine,
        engine_core_in_process,
        esp_scheduler,
        make_engine,
    )

    with engine_core_in_process():
        llm = make_engine(model, n, kv_cache_memory_bytes=pool,
                          max_model_len=n * capacity_tokens(pool),
                          additional_config={"esp": {"instances": n, "ring_prefill": ring}})
    try:
        sched = esp_scheduler(llm)
        warm = TokensPrompt(prompt_token_ids=prompt[:64])
        llm.generate([warm], SamplingParams(max_tokens=2), use_tqdm=False)
        before = sum(sched.stats.esp_bytes_sent)
        t0 = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=prompt)],
                           SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
        seconds = time.perf_counter() - t0
        stats = sched.esp_stats()
        return {"seconds": seconds, "bytes": sum(sched.stats.esp_bytes_sent) - before,
                "tokens": list(out[0].outputs[0].token_ids),
                "ring_prefills": stats["ring_prefills"],
                "parallel_prefills": stats["parallel_prefills"]}
    finally:
        close_engine(llm)


def summarize(rows: dict) -> dict:
    out = {}
    for (n, mode), rs in rows.items():
        out[f"{n}/{mode}"] = {"instances": n, "mode": mode,
                              "seconds": statistics.median(r["seconds"] for r in rs),
                              "all_seconds": [round(r["seconds"], 3) for r in rs],
                              "bytes": rs[0]["bytes"],
                              "ring_prefills": rs[0]["ring_prefills"],
                              "parallel_prefills": rs[0]["parallel_prefills"]}
    return out


def table(summary: dict, prompts: dict) -> str:
    lines = ["| instances | prompt tokens | mode | prefill s (median) | vs exchange | "
             "span MiB | runs (s) |", "|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        ref = summary[f"{s['instances']}/exchange"]["seconds"]
        lines.append(f"| {s['instances']} | {prompts[s['instances']]} | {s['mode']} | "
                     f"{s['seconds']:.2f} | {ref / s['seconds']:.2f}x | "
                     f"{s['bytes'] / MiB:.1f} | {s['all_seconds']} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({s["instances"] for s in summary.values()})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for k, mode in enumerate(MODES):
        ys = [summary[f"{n}/{mode}"]["seconds"] for n in ns]
        ax.bar([i + (k - 0.5) * width for i in range(len(ns))], ys, width, label=mode)
    ax.set_xticks(range(len(ns)), [f"{n} instances" for n in ns])
    ax.set_ylabel("prefill time (s, median)")
    ax.set_title("Long spanning prompt: striped ring vs query exchange (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default="2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-mib", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    ns = [int(x) for x in args.instances.split(",")]
    if any(n < 2 for n in ns):
        ap.error("--instances: each value must be >= 2 (a prompt spread over instances)")
    if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        print("note: VLLM_CPU_KVCACHE_SPACE unset for this run (it overrides --pool-mib)")
    pool = int(args.pool_mib * MiB)

    from tqdm import tqdm

    from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model

    positions = 8192
    while positions < max(ns) * capacity_tokens(pool):
        positions *= 2
    model = make_tiny_model(spec=TinyModelSpec(arch="llama", max_position_embeddings=positions))
    rng = random.Random(args.seed)
    prompts = {n: [rng.randrange(8, 512) for _ in range(int(0.9 * n * capacity_tokens(pool)))]
               for n in ns}
    rows: dict = {(n, m): [] for n in ns for m in MODES}
    t_run = time.perf_counter()
    with tqdm(total=args.rounds * len(rows), desc="engines") as bar:
        for rnd in range(args.rounds):
            order = list(rows) if rnd % 2 == 0 else list(reversed(rows))
            for n, mode in order:
                rows[(n, mode)].append(run_engine(model, n, MODES[mode], prompts[n], pool))
                bar.update()
    for n in ns:
        a, b = rows[(n, "ring")][0]["tokens"], rows[(n, "exchange")][0]["tokens"]
        if a != b:
            raise SystemExit(f"{n} instances: ring tokens {a} != exchange tokens {b}")
    summary = summarize(rows)
    lengths = {n: len(p) for n, p in prompts.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# Ring vs exchange prefill ({args.rounds} rounds, "
            f"{time.perf_counter() - t_run:.0f} s)\n\n{table(summary, lengths)}\n\n"
            "CPU figures: N instances share the same 2 cores.\n")
    (out / "ring_prefill.md").write_text(text)
    (out / "ring_prefill.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "ring_prefill.png")
    print(text)


if __name__ == "__main__":
    main()
