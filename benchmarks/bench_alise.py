"""FCFS vs SJF(oracle) vs ALISE (retrieval / online predictors) on the real vLLM CPU engine.

One engine (tiny float32 Llama), one heavy-tailed trace (most answers short, a few very long),
the same Poisson arrivals replayed for every policy; the policy is switched between phases with
``AliseScheduler.reconfigure`` so engine start-up is paid once. Latency is measured from each
request's *scheduled* arrival time. ``max_num_seqs`` is small so that, at the chosen load, FCFS
queues build up behind the long jobs (head-of-line blocking) — the regime ALISE targets.

    python benchmarks/bench_alise.py            # ~3-5 min on 2 cores; writes benchmarks/results/
    python benchmarks/bench_alise.py --requests 40 --load 0.9

The learned predictors start warm: retrieval pre-loads a training trace file (same distribution,
other seed) and the online predictor observes the same training samples.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

TOPICS = ["the ocean", "rome", "music", "gravity", "coffee", "trains", "volcanoes", "chess",
          "bees", "glass", "clouds", "paper", "bridges", "tea", "salt", "wolves"]
CLASSES = [  # (share, template, output length range)
    (0.70, "Answer in one word: what colour is {t}?", (4, 16)),
    (0.20, "Explain in a short paragraph how {t} works.", (32, 64)),
    (0.10, "Write a long, detailed essay about the history of {t}.", (200, 320)),
]


def make_trace(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r, acc = rng.random(), 0.0
        for share, template, (lo, hi) in CLASSES:
            acc += share
            if r <= acc:
                break
        out.append({"prompt": template.format(t=rng.choice(TOPICS)),
                    "output_len": rng.randint(lo, hi)})
    return out


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run_phase(engine, sched, trace, arrivals, cfg, warm, tokenizer):
    from vllm import SamplingParams

    from vllm_esp.predictor import PredictRequest
    from vllm_esp.scheduling import SchedulingConfig

    sched.reconfigure(SchedulingConfig.from_dict(cfg))
    if cfg.get("predictor") == "online":
        for row in warm:
            sched.predictor.observe(PredictRequest(tokenizer.encode(row["prompt"])),
                                    row["output_len"])
    start = time.time() + 0.2
    pending = list(range(len(trace)))
    first, done = {}, {}
    while pending or engine.has_unfinished_requests():
        now = time.time()
        while pending and start + arrivals[pending[0]] <= now:
            i = pending.pop(0)
            row = trace[i]
            params = SamplingParams(temperature=0.0, max_tokens=row["output_len"],
                                    ignore_eos=True, extra_args={"output_len": row["output_len"]})
            engine.add_request(str(i), row["prompt"], params, arrival_time=start + arrivals[i])
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, start + arrivals[pending[0]] - time.time()))
            continue
        for out in engine.step():
            t = time.time()
            i = int(out.request_id)
            if i not in first and out.outputs and out.outputs[0].token_ids:
                first[i] = t - (start + arrivals[i])
            if out.finished:
                done[i] = t - (start + arrivals[i])
    lat, ttft = list(done.values()), list(first.values())
    stats = sched.stats()
    return {
        "mean_latency": sum(lat) / len(lat), "p50_latency": percentile(lat, 50),
        "p99_latency": percentile(lat, 99), "mean_ttft": sum(ttft) / len(ttft),
        "p50_ttft": percentile(ttft, 50), "p99_ttft": percentile(ttft, 99),
        "max_ttft": max(ttft), "max_wait": stats.get("max_wait_ms", 0) / 1000,
        "finished": len(done), "stats": stats, "latencies": lat,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--load", type=float, default=0.9, help="offered load vs measured capacity")
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process core: switch policies
    from vllm import EngineArgs, SamplingParams
    from vllm.v1.engine.llm_engine import LLMEngine

    from vllm_esp.testing.tiny_model import make_tiny_model

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(out_dir / "tiny_model")
    train = make_trace(300, seed=args.seed + 1000)
    train_file = out_dir / "alise_train_trace.jsonl"
    train_file.write_text("\n".join(json.dumps(r) for r in train))
    engine = LLMEngine.from_engine_args(EngineArgs(
        model=model, dtype="float32", seed=0, enforce_eager=True, max_model_len=512,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=512,
        scheduler_cls="vllm_esp.scheduling.AliseScheduler",
        # the swap connector is inert unless the policy swaps (ALISE phases: swap="auto")
        kv_transfer_config={"kv_connector": "SwapConnector", "kv_role": "kv_both",
                            "kv_connector_module_path": "vllm_esp.scheduling.swap_connector"},
        additional_config={"esp": {"policy": "fcfs"}}))
    sched = engine.engine_core.engine_core.scheduler
    tokenizer = engine.get_tokenizer()

    # Capacity: time a full batch of decodes to set the arrival rate for the target load.
    t0 = time.time()
    probe = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    for i in range(args.max_num_seqs):
        engine.add_request(f"probe{i}", "warm up the engine", probe)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    step_s = (time.time() - t0) / steps
    trace = make_trace(args.requests, seed=args.seed)
    mean_out = sum(r["output_len"] for r in trace) / len(trace)
    capacity = args.max_num_seqs / (step_s * mean_out)  # requests per second
    rate = args.load * capacity
    rng = random.Random(args.seed + 7)
    arrivals, t = [], 0.0
    for _ in trace:
        arrivals.append(t)
        t += rng.expovariate(rate)
    print(f"step {step_s * 1e3:.1f} ms, mean output {mean_out:.0f} tok, capacity "
          f"{capacity:.2f} req/s, offered {rate:.2f} req/s over {arrivals[-1]:.1f} s")

    policies = {
        "FCFS": {"policy": "fcfs", "predictor": "online", "swap": "off"},
        "SJF (oracle)": {"policy": "sjf", "predictor": "oracle", "swap": "off"},
        "ALISE (retrieval)": {"policy": "alise", "predictor": "retrieval",
                              "predictor_options": {"trace_file": str(train_file)}},
        "ALISE (online)": {"policy": "alise", "predictor": "online"},
    }
    results = {}
    for name, cfg in policies.items():
        results[name] = run_phase(engine, sched, trace, arrivals, cfg, train, tokenizer)
        r = results[name]
        print(f"{name:18s} mean {r['mean_latency']:.2f}s p50 {r['p50_latency']:.2f}s "
              f"p99 {r['p99_latency']:.2f}s ttft mean {r['mean_ttft']:.2f}s "
              f"p99 {r['p99_ttft']:.2f}s max wait {r['max_wait']:.2f}s  {r['stats']}",
              flush=True)
    table = ["| policy | mean lat (s) | p50 lat | p99 lat | mean TTFT | p50 TTFT | p99 TTFT "
             "| max wait | pred MAE | pred rho | preempt (len/mem) |", "|" + "---|" * 11]
    for name, r in results.items():
        s = r["stats"]
        table.append(
            f"| {name} | {r['mean_latency']:.2f} | {r['p50_latency']:.2f} | "
            f"{r['p99_latency']:.2f} | {r['mean_ttft']:.2f} | {r['p50_ttft']:.2f} | "
            f"{r['p99_ttft']:.2f} | {r['max_wait']:.2f} | {s.get('prediction_mae', 0):.1f} | "
            f"{s.get('prediction_spearman', float('nan')):.2f} | "
            f"{s.get('preempt_length', 0)}/{s.get('preempt_memory', 0)} |")
    base = results["FCFS"]["mean_latency"]
    table.append("")
    table.append("mean-latency speed-up vs FCFS: " + ", ".join(
        f"{n} {base / r['mean_latency']:.2f}x" for n, r in results.items() if n != "FCFS"))
    text = "\n".join(table)
    print(text)
    (out_dir / "alise_table.md").write_text(
        f"step {step_s * 1e3:.1f} ms, offered {rate:.2f} req/s, {args.requests} requests, "
        f"max_num_seqs {args.max_num_seqs}\n\n{text}\n")
    (out_dir / "alise.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        names = list(results)
        xs = range(len(names))
        for off, key in ((-0.25, "mean_latency"), (0.0, "p50_latency"), (0.25, "p99_latency")):
            a.bar([x + off for x in xs], [results[n][key] for n in names], width=0.25,
                  label=key.replace("_", " "))
        a.set_xticks(list(xs), names, rotation=15)
        a.set_ylabel("seconds")
        a.set_title("request latency")
        a.legend()
        for n in names:
            lat = sorted(results[n]["latencies"])
            b.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=n)
        b.set_xscale("log")
        b.set_xlabel("latency (s)")
        b.set_ylabel("CDF")
        b.set_title("latency CDF (same arrivals)")
        b.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "alise.png", dpi=120)
        print("plot:", out_dir / "alise.png")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
