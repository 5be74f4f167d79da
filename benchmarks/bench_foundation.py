"""Engine start time and throughput: ESP (1, 2 instances) vs stock vLLM, side by side.

    python benchmarks/bench_foundation.py [--rounds 2] [--requests 64]

Same tiny float32 model, same workload, configurations interleaved round by round (the machine
is noisy; compare ratios within a round). ESP with 1 instance measures the plugin's overhead;
with 2 instances on a 2-core machine it shows the gain of a second replica. Prints a table and
writes benchmarks/results/foundation.png.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

CONFIGS = {"stock": None, "esp-1": 1, "esp-2": 2}


def run_config(model: str, instances, n_requests: int, seed: int = 0) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_esp.testing.engines import close_engine, make_engine

    rng = random.Random(seed)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(rng.randrange(64, 512))])
               for _ in range(n_requests)]
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    t0 = time.perf_counter()
    llm = make_engine(model, instances, kv_cache_memory_bytes=256 << 20)
    start_s = time.perf_counter() - t0
    try:
        llm.generate(prompts[:2], params, use_tqdm=False)  # first-step warm-up
        t1 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t1
    finally:
        close_engine(llm)
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    in_tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
    return {"start_s": start_s, "elapsed_s": elapsed, "output_tok_s": out_tokens / elapsed,
            "total_tok_s": (out_tokens + in_tokens) / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()

    from tqdm import tqdm

    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    names = args.configs.split(",")
    rows: dict[str, list[dict]] = {n: [] for n in names}
    with tqdm(total=args.rounds * len(names), desc="engines") as bar:
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                rows[name].append(run_config(model, CONFIGS[name], args.requests))
                bar.update()

    med = lambda xs: sorted(xs)[len(xs) // 2]
    summary = {n: {k: med([x[k] for x in rs]) for k in rs[0]} for n, rs in rows.items()}
    base = summary["stock"]
    print(f"\n{args.requests} requests, prompts 64-511 tokens, 64 output tokens each; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'config':8} {'start s':>8} {'out tok/s':>10} {'total tok/s':>12} {'tok/s vs stock':>15}")
    for n, s in summary.items():
        print(f"{n:8} {s['start_s']:8.1f} {s['output_tok_s']:10.1f} {s['total_tok_s']:12.1f} "
              f"{s['output_tok_s'] / base['output_tok_s']:15.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "foundation.json").write_text(json.dumps(rows, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].bar(list(summary), [s["start_s"] for s in summary.values()])
    axes[0].set_ylabel("engine start (s)")
    axes[1].bar(list(summary), [s["output_tok_s"] for s in summary.values()])
    axes[1].set_ylabel("output tokens/s")
    fig.tight_layout()
    fig.savefig(out / "foundation.png", dpi=120)
    print(f"plot: {out / 'foundation.png'}")


if __name__ == "__main__":
    main()
