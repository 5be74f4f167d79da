"""Who admits new requests under load: vLLM (each instance's scheduler) or the global
manager's dispatching rule (``--esp-admission manager``), side by side on the CPU engine.

    python benchmarks/bench_admission.py [--requests 1000] [--longs 40] [--rounds 1]

The load of issue 20: ``--requests`` requests arrive at once (vLLM's bench client at its
default infinite rate), ``--longs`` of them with 2000-2800-token prompts, the others with
50-400 tokens; 16-64 output tokens each, greedy. Two ESP instances of the tiny float32
Llama with the built-in ``measured_cpu_tiny-llama`` profile (the manager needs one) and the
default KV cache, engine core in this process. Reported per configuration: short and long
requests' TTFT (mean / p90, vLLM's own timestamps), preemptions (vLLM's per-instance
counters: manager admission promises none), the largest number of requests waiting in one
step, and the wall time. Configurations alternate between rounds. CPU figures: the two
instances share 2 cores. Writes benchmarks/results/admission.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = "measured_cpu_tiny-llama"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def workload(args):
    rng = random.Random(11)
    longs = set(rng.sample(range(args.requests), args.longs))
    reqs = []
    for i in range(args.requests):
        n = rng.randint(2000, 2800) if i in longs else rng.randint(50, 400)
        reqs.append((f"{'l' if i in longs else 's'}{i}",
                     [rng.randrange(8, 512) for _ in range(n)], rng.randint(16, 64)))
    return reqs


def run(model: str, admission: str, reqs, args) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_esp.testing.engines import close_engine, engine_core_in_process, make_engine

    with engine_core_in_process():
        llm = make_engine(model, 2, max_model_len=4096, disable_log_stats=False,
                          additional_config={"esp": {"instances": 2, "profile": PROFILE,
                                                     "admission": admission}})
    try:
        engine = llm.llm_engine
        sched = engine.engine_core.engine_core.scheduler
        t0 = time.perf_counter()
        for rid, tokens, out in reqs:
            engine.add_request(rid, TokensPrompt(prompt_token_ids=tokens),
                               SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True))
        done, max_waiting, steps = {}, 0, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
            stats = sched.esp_stats()
            max_waiting = max(max_waiting, sum(stats["waiting"]) + len(sched.arrivals))
            steps += 1
            if steps % 200 == 0:
                print(f"  {admission}: {len(done)}/{len(reqs)} done, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        wall = time.perf_counter() - t0
        preemptions = sum(sched.esp_stats()["preemptions"])
    finally:
        close_engine(llm)
    ttft = {"s": [], "l": []}
    for rid, out in done.items():
        m = out.metrics
        if m is not None and m.first_token_latency:  # vLLM's TTFT (arrival: wall clock,
            ttft[rid[0]].append(m.first_token_latency)  # first_token_ts: monotonic)
    row = {"admission": admission, "wall_s": wall, "preemptions": preemptions,
           "max_waiting": max_waiting, "finished": len(done)}
    for k, name in (("s", "short"), ("l", "long")):
        row[f"{name}_ttft_mean_s"] = statistics.mean(ttft[k]) if ttft[k] else float("nan")
        row[f"{name}_ttft_p90_s"] = pct(ttft[k], 90)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--longs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model()
    reqs = workload(args)
    configs = ["vllm", "manager"]
    rows = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            print(f"round {r}: --esp-admission {c}", flush=True)
            res = run(model, c, reqs, args)
            rows[c].append(res)
            print(json.dumps({"round": r, **res}), flush=True)
    keys = ("short_ttft_mean_s", "short_ttft_p90_s", "long_ttft_mean_s", "long_ttft_p90_s",
            "preemptions", "max_waiting", "wall_s")
    med = {c: {k: statistics.median(x[k] for x in rows[c]) for k in keys} for c in configs}
    base = med["vllm"]["short_ttft_mean_s"]
    lines = [f"2 ESP instances (tiny Llama fp32, 2-core CPU, profile {PROFILE}), "
             f"{args.requests} requests at once, {args.longs} with 2000-2800-token prompts; "
             f"medians of {args.rounds} round(s)", "",
             "| admission | short TTFT mean / p90 s | vs vllm | long TTFT mean / p90 s | "
             "preemptions | max waiting | wall s |", "|---|---|---|---|---|---|---|"]
    for c in configs:
        m = med[c]
        lines.append(f"| {c} | {m['short_ttft_mean_s']:.2f} / {m['short_ttft_p90_s']:.2f} | "
                     f"{m['short_ttft_mean_s'] / base:.2f}x | {m['long_ttft_mean_s']:.2f} / "
                     f"{m['long_ttft_p90_s']:.2f} | {m['preemptions']:.0f} | "
                     f"{m['max_waiting']:.0f} | {m['wall_s']:.1f} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "admission.md").write_text(table + "\n")
    (RESULTS / "admission.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                       indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        x = range(len(configs))
        ax.bar([i - 0.2 for i in x], [med[c]["short_ttft_mean_s"] for c in configs], 0.4,
               label="short requests")
        ax.bar([i + 0.2 for i in x], [med[c]["long_ttft_mean_s"] for c in configs], 0.4,
               label="long requests")
        ax.set_xticks(list(x), [f"--esp-admission {c}" for c in configs])
        ax.set(ylabel="mean TTFT (s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "admission.png", dpi=100)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
