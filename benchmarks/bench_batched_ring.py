"""Several spanning prompts arriving together: one batched ring vs a ring each, one run.

    python benchmarks/bench_batched_ring.py [--prompts 3] [--tokens 600] [--rounds 3]

Tiny random float32 Llama, 2 instances of ``--pool-mib`` KV each. ``--prompts`` prompts of
``--tokens`` tokens, each asking to be spread over both instances (``esp_instances: 2``),
arrive in one ``LLM.generate`` call with 1 output token (so the time is the prefill). Two
engines, identical but for ``esp.batch_rings``:

- ``batched``: the later prompts join the first one's pending parallel prefill; all are
  prefilled in one step, one message per ring hop carrying every prompt's K/V shard.
- ``separate``: the first prompt's ring reserves both instances for its step; the others
  cannot start a parallel prefill there, so their chunks run one after another (chunk 0,
  then chunk 1 asking chunk 0's holder for partial attention).

Per round and engine: wall time of the call, the engine steps it took, the ring messages the
workers sent (``ring_shift`` calls) and the tokens (equal in both modes, or the run fails).
Engines alternate, order reversed every other round; medians. CPU figures: both instances
share the machine's 2 cores, so this shows step and message overheads, not GPU speed-ups.
Writes benchmarks/results/batched_ring.{md,json,png}.
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
MODES = {"batched": True, "separate": False}


def run_engine(model: str, batch: bool, prompts: list[list[int]], pool: int) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_esp.testing.engines import (
        close_engine,
        engine_core_in_process,
        esp_scheduler,
        make_engine,
    )

    with engine_core_in_process():
        llm = make_engine(model, 2, kv_cache_memory_bytes=pool, max_model_len=4096,
                          additional_config={"esp": {"instances": 2, "batch_rings": batch}})
    try:
        sched = esp_scheduler(llm)
        llm.generate([TokensPrompt(prompt_token_ids=prompts[0][:64])],
                     SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
        calls = _calls(llm)
        steps = sched._step
        params = SamplingParams(temperature=0.0, max_tokens=1,
                                extra_args={"esp_instances": 2})
        t0 = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                           use_tqdm=False)
        seconds = time.perf_counter() - t0
        stats = sched.esp_stats()
        return {"seconds": seconds, "steps": sched._step - steps,
                **{k: v - calls[k] for k, v in _calls(llm).items()},
                "tokens": [list(o.outputs[0].token_ids) for o in out],
                "ring_prefills": stats["ring_prefills"],
                "batched_ring_prefills": stats["batched_ring_prefills"],
                "parallel_prefills": stats["parallel_prefills"]}
    finally:
        close_engine(llm)


def _calls(llm) -> dict:
    """Communicator calls of all workers so far: ring hops, and query exchanges (a query
    send plus a partial return per call pair)."""
    calls = llm.collective_rpc("esp_comm_calls")
    return {"ring_messages": sum(c.get("ring_shift", 0) for c in calls),
            "exchange_messages": sum(c.get("span_query", 0) + c.get("span_partial", 0)
                                     for c in calls)}


def summarize(rows: dict) -> dict:
    return {mode: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "all_seconds": [round(r["seconds"], 3) for r in rs],
                   **{k: rs[0][k] for k in ("steps", "ring_messages", "exchange_messages",
                                            "ring_prefills",
                                            "batched_ring_prefills", "parallel_prefills")}}
            for mode, rs in rows.items()}


def table(summary: dict) -> str:
    ref = summary["separate"]["seconds"]
    lines = ["| mode | prefill s (median) | speed-up vs separate | engine steps | "
             "ring / exchange calls (all workers) | parallel / ring / batched-ring prefills | "
             "runs (s) |", "|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['seconds']:.3f} | {ref / s['seconds']:.2f}x | {s['steps']} "
                     f"| {s['ring_messages']} / {s['exchange_messages']} | {s['parallel_prefills']} / {s['ring_prefills']} "
                     f"/ {s['batched_ring_prefills']} | {s['all_seconds']} |")
    return "\n".join(lines)


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(summary), [s["seconds"] for s in summary.values()], color=["C0", "C1"])
    ax.set_ylabel("prefill time (s, median)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-mib", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.prompts < 2 or args.tokens < 256:
        ap.error("need --prompts >= 2 and --tokens >= 256 (two chunks of whole blocks)")
    if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        print("note: VLLM_CPU_KVCACHE_SPACE unset for this run (it overrides --pool-mib)")

    from tqdm import tqdm

    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(8, 512) for _ in range(args.tokens)] for _ in range(args.prompts)]
    pool = int(args.pool_mib * MiB)
    rows: dict = {m: [] for m in MODES}
    t_run = time.perf_counter()
    with tqdm(total=args.rounds * len(MODES), desc="engines") as bar:
        for rnd in range(args.rounds):
            for mode in (MODES if rnd % 2 == 0 else list(reversed(MODES))):
                rows[mode].append(run_engine(model, MODES[mode], prompts, pool))
                bar.update()
    if rows["batched"][0]["tokens"] != rows["separate"][0]["tokens"]:
        raise SystemExit("batched and separate rings gave different tokens")
    summary = summarize(rows)
    title = f"{args.prompts} x {args.tokens}-token prompts on 2 instances (CPU)"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# Batched vs separate ring prefills: {title}, {args.rounds} rounds, "
            f"{time.perf_counter() - t_run:.0f} s\n\n{table(summary)}\n\n"
            "CPU figures: both instances share the same 2 cores.\n")
    (out / "batched_ring.md").write_text(text)
    (out / "batched_ring.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / "batched_ring.png", title)
    print(text)


if __name__ == "__main__":
    main()
