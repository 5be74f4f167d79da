"""What a length predictor adds to the scheduler's part of an engine step (issue 21, item 1).

vLLM's own scheduler (``AliseScheduler``, policy alise) is driven without a model
(``vllm_esp.testing.scheduler_harness``): a burst of ``--requests`` random ``--prompt-len``-token
prompts arrives in one step, then every step schedules and returns one token per running
request until all have produced ``--output-len`` tokens. The time of each step (arrivals +
``schedule`` + ``update_from_output``) is what the predictor can add to an engine step. With
``retrieval`` the real encoder (MiniLM when installed) runs in its prediction process meanwhile.
Predictors alternate over ``--rounds`` rounds (A B, B A, ...), each with fresh prompts.

    python benchmarks/bench_predictor_steps.py [--predictors online,retrieval --rounds 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_esp.testing.scheduler_harness import fake_step, make_request, make_scheduler  # noqa: E402


def one_round(sched, rng, args, tag: str) -> dict:
    late0 = sched.stats().get("prediction_late", 0)
    burst = [make_request(f"{tag}-{i}", [rng.randrange(10, 500) for _ in range(args.prompt_len)],
                          args.output_len) for i in range(args.requests)]
    first, done = fake_step(sched, burst)
    times, finished = [], len(done)
    while finished < args.requests:
        seconds, done = fake_step(sched)
        times.append(seconds)
        finished += len(done)
    stats = sched.stats()
    return {"burst_ms": first * 1e3, "mean_ms": statistics.mean(times) * 1e3,
            "max_ms": max(times) * 1e3, "steps": len(times) + 1,
            "late": stats.get("prediction_late", 0) - late0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the tiny test model (written here)")
    ap.add_argument("--predictors", default="online,retrieval")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    model = args.model
    if model is None:
        from vllm_esp.testing.tiny_model import make_tiny_model

        model = str(make_tiny_model(Path(args.out) / "tiny_model"))
    names = args.predictors.split(",")
    scheds = {p: make_scheduler(model, {"policy": "alise", "predictor": p},
                                max_num_seqs=256, num_blocks=4096, max_model_len=1024)
              for p in names}
    rng = random.Random(0)
    runs = {p: [] for p in names}
    try:
        for r in range(args.rounds):
            for p in (names if r % 2 == 0 else names[::-1]):
                res = one_round(scheds[p], rng, args, f"r{r}")
                runs[p].append(res)
                print(f"[{r}] {p:10s} burst step {res['burst_ms']:.2f} ms, then mean "
                      f"{res['mean_ms']:.3f} ms max {res['max_ms']:.2f} ms over {res['steps']} "
                      f"steps; finished before their prediction: {res['late']}", flush=True)
                time.sleep(1.0)
    finally:
        for s in scheds.values():
            s.shutdown()
    print(f"\nmedian of {args.rounds} rounds: {args.requests} x {args.prompt_len}-token prompts "
          f"in one step, {args.output_len} tokens each")
    print("| predictor | burst step (ms) | mean step (ms) | max step (ms) |")
    print("|---|---|---|---|")
    for p, rs in runs.items():
        print(f"| {p} | {statistics.median(x['burst_ms'] for x in rs):.2f} | "
              f"{statistics.median(x['mean_ms'] for x in rs):.3f} | "
              f"{statistics.median(x['max_ms'] for x in rs):.2f} |")


if __name__ == "__main__":
    main()
