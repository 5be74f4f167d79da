"""The engine with spread requests vs stock vLLM with one pool of the summed size: wall time
of one batch of mixed requests, side by side.

    python benchmarks/bench_spread_mix.py [--requests 64] [--spread 12] [--rounds 3]

``--requests`` prompts of 32-512 tokens (seeded), 48 greedy output tokens each, all at once;
``--spread`` of them carry the hint ``{"esp_instances": 2}`` (their KV is split over both
instances: ring prefill, decode by partial attention and LSE merge). Configurations, one
engine each, alternating order between rounds:

- ``stock``: stock vLLM, one KV pool of 2 x ``--pool-mib``;
- ``esp-2``: 2 ESP instances of ``--pool-mib`` each, no hint (every request whole on one);
- ``esp-2-spread``: the same with the hinted requests spread (instances on their own clocks);
- ``esp-2-spread-lockstep``: the same with ``esp.lockstep`` (every step waits for both).

The table gives the median wall time and its ratio to stock. CPU figures on 2 cores shared
by both instances: they show the plugin's overheads, not GPU speed-ups. Writes
benchmarks/results/spread_mix.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ["stock", "esp-2", "esp-2-spread", "esp-2-spread-lockstep"]


def workload(args, spread: bool):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(8, 512)
                                              for _ in range(rng.randint(32, 512))])
               for _ in range(args.requests)]
    params = [SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True,
                             extra_args={"esp_instances": 2} if spread and i < args.spread
                             else None) for i in range(args.requests)]
    return prompts, params


def run(model: str, config: str, args) -> dict:
    from vllm_esp.testing.engines import close_engine, make_engine

    pool = int(args.pool_mib * 2**20)
    if config == "stock":
        llm = make_engine(model, None, kv_cache_memory_bytes=2 * pool)
    else:
        llm = make_engine(model, 2, kv_cache_memory_bytes=pool, additional_config={
            "esp": {"instances": 2, "lockstep": config.endswith("lockstep")}})
    try:
        prompts, params = workload(args, spread="spread" in config)
        llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
    finally:
        close_engine(llm)
    return {"config": config, "wall_s": wall,
            "tokens": [list(o.outputs[0].token_ids) for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--spread", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pool-mib", type=float, default=64.0)
    args = ap.parse_args()
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    walls = {c: [] for c in CONFIGS}
    tokens = {}
    for r in range(args.rounds):
        for c in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
            res = run(model, c, args)
            walls[c].append(res["wall_s"])
            tokens[c] = res["tokens"]
            print(f"round {r} {c}: {res['wall_s']:.3f} s", flush=True)
    same = {c: tokens[c] == tokens["stock"] for c in CONFIGS}
    med = {c: statistics.median(walls[c]) for c in CONFIGS}
    lines = [f"{args.requests} requests (32-512-token prompts, 48 output tokens), "
             f"{args.spread} spread over 2 instances in the spread configs; tiny Llama fp32, "
             f"2-core CPU; medians of {args.rounds} rounds", "",
             "| config | wall s | vs stock | tokens equal stock |", "|---|---|---|---|"]
    for c in CONFIGS:
        lines.append(f"| {c} | {med[c]:.3f} | {med[c] / med['stock']:.2f}x | {same[c]} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spread_mix.md").write_text(table + "\n")
    (RESULTS / "spread_mix.json").write_text(json.dumps(
        {"args": vars(args), "walls": walls, "same_tokens": same}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(CONFIGS, [med[c] for c in CONFIGS])
        ax.set(ylabel="wall time (s)", title=f"{args.requests} requests, {args.spread} spread")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "spread_mix.png", dpi=100)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
