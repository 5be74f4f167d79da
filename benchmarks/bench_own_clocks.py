"""Short requests decoding on one instance while long prompts prefill on the other: TPOT of
the short requests with instances in lockstep vs on their own clocks, side by side.

    python benchmarks/bench_own_clocks.py [--rounds 3] [--shorts 16] [--longs 4]
                                          [--long-tokens 6000] [--short-tokens 96]

Two ESP instances of the tiny float32 Llama, engine core in this process. The short requests
(prompts of 32-96 tokens, ``--short-tokens`` output tokens each) are pinned to instance 1, the
long prompts (``--long-tokens``, one step each: the token budget holds them, 4 output tokens)
to instance 0, arriving one after another while the shorts decode (one every few engine
steps). Configurations, interleaved per round:

- ``alone``: the short requests only (the reference TPOT);
- ``lockstep``: with the long prompts, ``esp.lockstep`` on (every engine step waits for both
  instances: the behaviour before instances got their own clocks);
- ``own-clocks``: with the long prompts, the default.

TPOT per request = (last token - first token) / (tokens - 1), vLLM's own timestamps; the table
gives p50/p99 over the short requests (medians over rounds) and the ratio to ``alone``. This is
a 2-core CPU: the two instances share the cores, so a long prefill also slows the other
instance's compute; the figures show what lockstep adds on top of that, not GPU behaviour.
Writes benchmarks/results/own_clocks.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def run(model: str, config: str, args) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_esp.testing.engines import close_engine, engine_core_in_process, make_engine

    lockstep = config == "lockstep"
    with engine_core_in_process():
        llm = make_engine(model, 2, max_model_len=8192, max_num_batched_tokens=8192,
                          disable_log_stats=False,
                          additional_config={"esp": {"instances": 2, "lockstep": lockstep}})
    try:
        core = llm.llm_engine.engine_core.engine_core
        sched = core.scheduler
        dispatch = sched._dispatch

        def pinned(request, among=None):  # long prompts on 0, short requests on 1
            dispatch(request, [0] if request.num_prompt_tokens > 1000 else [1])

        sched._dispatch = pinned
        rng = random.Random(7)
        engine = llm.llm_engine
        shorts = [f"s{i}" for i in range(args.shorts)]
        for rid in shorts:
            engine.add_request(rid, TokensPrompt(prompt_token_ids=[
                rng.randrange(8, 512) for _ in range(rng.randint(32, 96))]),
                SamplingParams(temperature=0.0, max_tokens=args.short_tokens, ignore_eos=True))
        longs = [] if config == "alone" else [f"l{i}" for i in range(args.longs)]
        done, steps, t0 = {}, 0, time.perf_counter()
        while engine.has_unfinished_requests():
            if longs and steps % args.long_every == 0:
                rid = longs.pop(0)
                engine.add_request(rid, TokensPrompt(prompt_token_ids=[
                    rng.randrange(8, 512) for _ in range(args.long_tokens)]),
                    SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
            steps += 1
        wall = time.perf_counter() - t0
    finally:
        close_engine(llm)
    tpot = []
    for rid in shorts:
        m = done[rid].metrics
        if m is not None and m.num_generation_tokens > 1:
            tpot.append((m.last_token_ts - m.first_token_ts) / (m.num_generation_tokens - 1))
    return {"config": config, "wall_s": wall, "tpot_p50_ms": pct(tpot, 50) * 1e3,
            "tpot_p99_ms": pct(tpot, 99) * 1e3, "n": len(tpot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shorts", type=int, default=16)
    ap.add_argument("--short-tokens", type=int, default=96)
    ap.add_argument("--longs", type=int, default=4)
    ap.add_argument("--long-tokens", type=int, default=6000)
    ap.add_argument("--long-every", type=int, default=20, help="engine steps between longs")
    args = ap.parse_args()
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    configs = ["alone", "lockstep", "own-clocks"]
    rows = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            res = run(model, c, args)
            rows[c].append(res)
            print(json.dumps({"round": r, **res}), flush=True)
    med = {c: {k: statistics.median(x[k] for x in rows[c])
               for k in ("tpot_p50_ms", "tpot_p99_ms", "wall_s")} for c in configs}
    base = med["alone"]["tpot_p99_ms"]
    lines = [f"2 instances (tiny Llama fp32, 2-core CPU), {args.shorts} short requests on "
             f"instance 1, {args.longs} prompts of {args.long_tokens} tokens on instance 0; "
             f"medians of {args.rounds} rounds", "",
             "| config | TPOT p50 ms | TPOT p99 ms | p99 vs alone | wall s |",
             "|---|---|---|---|---|"]
    for c in configs:
        m = med[c]
        lines.append(f"| {c} | {m['tpot_p50_ms']:.1f} | {m['tpot_p99_ms']:.1f} | "
                     f"{m['tpot_p99_ms'] / base:.2f}x | {m['wall_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "own_clocks.md").write_text(table + "\n")
    (RESULTS / "own_clocks.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                        indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar([f"{c}\np50" for c in configs], [med[c]["tpot_p50_ms"] for c in configs])
        ax.bar([f"{c}\np99" for c in configs], [med[c]["tpot_p99_ms"] for c in configs])
        ax.set(ylabel="TPOT of short requests (ms)")
        fig.tight_layout()
        fig.savefig(RESULTS / "own_clocks.png", dpi=100)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
