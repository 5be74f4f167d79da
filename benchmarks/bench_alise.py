"""FCFS vs SJF(oracle) vs ALISE (retrieval / online predictors) on the real vLLM CPU engine.

One engine (tiny float32 Llama), one or more output-length traces (``--trace``), the same
Poisson arrivals replayed for every policy of a trace; the policy is switched between phases with
``AliseScheduler.reconfigure`` so engine start-up is paid once. Latency is measured from each
request's *scheduled* arrival time. ``max_num_seqs`` is small so that, at the chosen load, FCFS
queues build up behind the long jobs (head-of-line blocking) — the regime ALISE targets.

The trace spans ``--duration`` seconds of arrivals (tens of seconds, so queues really build).
The machine may be shared, so the phases are interleaved and repeated in mirrored order
(A B C D, D C B A, A B C D, ...) and every metric is the median over the repeats; each phase
reports its mean engine step time, so a phase that ran under CPU contention is visible.

    python benchmarks/bench_alise.py            # ~6-8 min on 2 cores; writes benchmarks/results/
    python benchmarks/bench_alise.py --duration 10 --repeats 2
    python benchmarks/bench_alise.py --trace bimodal,heavy   # both traces, same engine and step

Traces (``--trace``): ``bimodal`` (70% of answers 4-16 tokens, 20% 32-64, 10% 200-320) and
``heavy`` (bounded Pareto output lengths, tail index 1.1, 4-2000 tokens: 0.9% of answers are
256-2000 tokens). Each request's prompt template names its length class.

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
CLASSES = [  # bimodal trace: (share, template, output length range)
    (0.70, "Answer in one word: what colour is {t}?", (4, 16)),
    (0.20, "Explain in a short paragraph how {t} works.", (32, 64)),
    (0.10, "Write a long, detailed essay about the history of {t}.", (200, 320)),
]
# heavy trace: output lengths from a bounded Pareto distribution, the textbook heavy-tailed job
# size model of the SRPT literature (Bansal & Harchol-Balter 2001 use tail index 1.1), from the
# bimodal trace's shortest answer (4 tokens) to 2000 tokens. The prompt template is the one of
# the length's bucket, so prompts carry the coarse signal a real request has ("one word" vs
# "an essay") but not the length within the bucket. Shares: 78% 4-15, 17% 16-63, 3.7% 64-255,
# 0.9% 256-2000 (0.13% above 1000); median 7.5, mean 20 tokens.
PARETO_ALPHA, PARETO_MIN, PARETO_MAX = 1.1, 4, 2000
HEAVY_BUCKETS = [  # (lower bound of the output length, template)
    (4, "Answer in one word: what colour is {t}?"),
    (16, "Explain in a short paragraph how {t} works."),
    (64, "Write a one-page overview of {t}."),
    (256, "Write a long, detailed essay about the history of {t}."),
]
TRACES = ("bimodal", "heavy")


def bounded_pareto(rng: random.Random, alpha=PARETO_ALPHA, lo=PARETO_MIN, hi=PARETO_MAX) -> int:
    """Inverse-CDF sample of a Pareto(alpha) truncated to [lo, hi], rounded down."""
    u = rng.random()
    x = lo / (1.0 - u * (1.0 - (lo / hi) ** alpha)) ** (1.0 / alpha)
    return min(hi, int(x))


def make_trace(n: int, seed: int, kind: str = "bimodal") -> list[dict]:
    if kind not in TRACES:
        raise ValueError(f"unknown trace {kind!r}; expected one of {TRACES}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if kind == "heavy":
            length = bounded_pareto(rng)
            template = [tpl for lo, tpl in HEAVY_BUCKETS if length >= lo][-1]
            out.append({"prompt": template.format(t=rng.choice(TOPICS)), "output_len": length})
            continue
        r, acc = rng.random(), 0.0
        for share, template, (lo, hi) in CLASSES:
            acc += share
            if r <= acc:
                break
        out.append({"prompt": template.format(t=rng.choice(TOPICS)),
                    "output_len": rng.randint(lo, hi)})
    return out


def make_workload(step_s, load, duration, max_num_seqs, seed=0, requests=None, kind="bimodal"):
    """(trace, arrival times, rate, capacity, mean output length): Poisson arrivals at ``load``
    x the capacity of ``max_num_seqs`` slots producing one token per step of ``step_s``."""
    mean_out = sum(r["output_len"] for r in make_trace(2000, seed=seed, kind=kind)) / 2000
    capacity = max_num_seqs / (step_s * mean_out)  # requests per second
    rate = load * capacity
    n = requests or max(20, int(rate * duration))
    trace = make_trace(n, seed=seed, kind=kind)
    rng = random.Random(seed + 7)
    arrivals, t = [], 0.0
    for _ in trace:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return trace, arrivals, rate, capacity, mean_out


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def run_phase(engine, sched, trace, arrivals, cfg, warm, tokenizer, step_s=None):
    """Replay the arrivals under one policy. ``step_s`` None: wall clock. Else a simulated
    clock: every engine step takes ``step_s`` seconds, arrivals are injected by that clock and
    the scheduler's waits/aging use it too, so contention from other jobs on the machine cannot
    change the comparison (the engine, scheduler, predictors and swaps all still run for real).
    """
    from vllm import SamplingParams

    from vllm_esp.predictor import PredictRequest
    from vllm_esp.scheduling import SchedulingConfig

    sched.reconfigure(SchedulingConfig.from_dict(cfg))
    if cfg.get("predictor") in ("online", "retrieval"):
        # online learns the training samples; retrieval pre-loads them in its own process
        # (trace_file) and its provisional estimate (online, in the engine) learns them here
        for row in warm:
            sched.predictor.observe(PredictRequest(tokenizer.encode(row["prompt"])),
                                    row["output_len"])
    sim = [0.0]
    if step_s is None:
        start, clock = time.time() + 0.2, time.time
    else:
        start, clock = 0.0, (lambda: sim[0])
    sched.clock = clock
    pending = list(range(len(trace)))
    first, done = {}, {}
    steps, step_time = 0, 0.0
    try:
        while pending or engine.has_unfinished_requests():
            now = clock()
            while pending and start + arrivals[pending[0]] <= now:
                i = pending.pop(0)
                row = trace[i]
                params = SamplingParams(temperature=0.0, max_tokens=row["output_len"],
                                        ignore_eos=True,
                                        extra_args={"output_len": row["output_len"]})
                engine.add_request(str(i), row["prompt"], params,
                                   arrival_time=start + arrivals[i])
            if not engine.has_unfinished_requests():
                if step_s is None:
                    time.sleep(max(0.0, start + arrivals[pending[0]] - time.time()))
                else:
                    sim[0] = arrivals[pending[0]]
                continue
            t0 = time.time()
            outs = engine.step()
            steps, step_time = steps + 1, step_time + (time.time() - t0)
            if step_s is not None:
                sim[0] += step_s
            t = clock()
            for out in outs:
                i = int(out.request_id)
                if i not in first and out.outputs and out.outputs[0].token_ids:
                    first[i] = t - (start + arrivals[i])
                if out.finished:
                    done[i] = t - (start + arrivals[i])
    finally:
        sched.clock = time.time
    lat, ttft = list(done.values()), list(first.values())
    stats = sched.stats()
    return {
        "mean_latency": sum(lat) / len(lat), "p50_latency": percentile(lat, 50),
        "p99_latency": percentile(lat, 99), "mean_ttft": sum(ttft) / len(ttft),
        "p50_ttft": percentile(ttft, 50), "p99_ttft": percentile(ttft, 99),
        "max_ttft": max(ttft), "max_wait": stats.get("max_wait_ms", 0) / 1000,
        "step_ms": 1e3 * step_time / max(steps, 1), "steps": steps,
        "preempt_length": stats.get("preempt_length", 0),
        "preempt_memory": stats.get("preempt_memory", 0),
        "prediction_mae": stats.get("prediction_mae", 0.0),
        "prediction_spearman": stats.get("prediction_spearman", float("nan")),
        "scheduled_provisional": stats.get("scheduled_provisional", 0),
        "finished": len(done), "stats": stats, "latencies": lat,
        "per_request": {i: (done[i], first.get(i)) for i in done},
    }


METRICS = ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p50_ttft", "p99_ttft",
           "max_ttft", "max_wait", "step_ms", "preempt_length", "preempt_memory",
           "prediction_mae", "prediction_spearman")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def build_engine(out_dir: Path, max_num_seqs: int):
    """(engine, its AliseScheduler, tokenizer): the tiny float32 Llama on the CPU engine, core
    in-process (policies are switched between phases), swap connector configured."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process core: switch policies
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from vllm_esp.testing.tiny_model import make_tiny_model

    model = make_tiny_model(out_dir / "tiny_model")
    engine = LLMEngine.from_engine_args(EngineArgs(
        # room for the heavy trace's 2000-token answers (bimodal never gets near it)
        model=model, dtype="float32", seed=0, enforce_eager=True, max_model_len=2304,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=512,
        scheduler_cls="vllm_esp.scheduling.AliseScheduler",
        # the swap connector is inert unless the policy swaps (ALISE phases: swap="auto")
        kv_transfer_config={"kv_connector": "SwapConnector", "kv_role": "kv_both",
                            "kv_connector_module_path": "vllm_esp.scheduling.swap_connector"},
        additional_config={"esp": {"policy": "fcfs"}}))
    return engine, engine.engine_core.engine_core.scheduler, engine.get_tokenizer()


def calibrate_step(engine, max_num_seqs: int) -> float:
    """Median wall time (s) of a step of ``max_num_seqs`` decodes, after a warm-up round: the
    median is robust to a burst of contention during the probe."""
    from vllm import SamplingParams

    probe = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    durations = []
    for rnd in range(3):
        for i in range(max_num_seqs):
            engine.add_request(f"probe{rnd}-{i}", "warm up the engine", probe)
        while engine.has_unfinished_requests():
            t0 = time.time()
            engine.step()
            if rnd:
                durations.append(time.time() - t0)
    return median(durations)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of arrivals")
    ap.add_argument("--requests", type=int, default=None,
                    help="number of requests (default: rate x duration)")
    ap.add_argument("--load", type=float, default=0.9, help="offered load vs measured capacity")
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="mirrored rounds of all policies")
    ap.add_argument("--policies", default=None,
                    help="comma-separated subset of: fcfs,sjf,alise-retrieval,alise-online,"
                         "alise-oracle,sjf-online")
    ap.add_argument("--clock", choices=("steps", "wall"), default="steps",
                    help="steps: simulated clock, each engine step = the calibrated step time "
                         "(immune to other jobs on the machine); wall: real time")
    ap.add_argument("--step-ms", type=float, default=None,
                    help="use this step time instead of the calibrated one (reproducible "
                         "simulated clock and arrival rate on a busy machine)")
    ap.add_argument("--esp", default="{}",
                    help="JSON of extra esp options for the ALISE phases (e.g. aging knobs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", default="bimodal",
                    help="comma-separated traces to run, one after the other on the same engine "
                         "and step: bimodal (70%% 4-16, 20%% 32-64, 10%% 200-320 tokens) and/or "
                         "heavy (bounded Pareto, alpha 1.1, 4-2000 tokens)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = args.trace.split(",")
    for kind in kinds:
        if kind not in TRACES:
            ap.error(f"unknown trace {kind!r}; expected some of {TRACES}")
    engine, sched, tokenizer = build_engine(out_dir, args.max_num_seqs)
    step_s = calibrate_step(engine, args.max_num_seqs)
    if args.step_ms is not None:
        print(f"calibrated step {step_s * 1e3:.2f} ms; using --step-ms {args.step_ms}")
        step_s = args.step_ms / 1e3
    # The cost model of the scheduler uses the measured step (one token per running request
    # per step) so that preemption gains and costs are in real seconds.
    cost = {"decode_s_per_token": step_s}
    all_policies = {
        "fcfs": ("FCFS", {"policy": "fcfs", "predictor": "online", "swap": "off"}),
        "sjf": ("SJF (oracle)", {"policy": "sjf", "predictor": "oracle", "swap": "off"}),
        "sjf-online": ("SJF (online)", {"policy": "sjf", "predictor": "online", "swap": "off"}),
        # retrieval phases pre-load the trace's training file (set per trace in run_trace)
        "alise-retrieval": ("ALISE (retrieval)", {"policy": "alise", "predictor": "retrieval"}),
        "alise-online": ("ALISE (online)", {"policy": "alise", "predictor": "online"}),
        "alise-oracle": ("ALISE (oracle)", {"policy": "alise", "predictor": "oracle"}),
    }
    keys = (args.policies.split(",") if args.policies else
            ["fcfs", "sjf", "alise-retrieval", "alise-online"])
    extra = json.loads(args.esp)
    policies = {all_policies[k][0]: dict(all_policies[k][1], **cost,
                                         **(extra if k.startswith("alise") else {}))
                for k in keys}
    for kind in kinds:
        run_trace(engine, sched, tokenizer, args, kind, step_s, policies, out_dir)


def run_trace(engine, sched, tokenizer, args, kind, step_s, policies, out_dir):
    """All policies on one trace (same arrivals), interleaved in mirrored repeats; writes
    alise_<kind>_table.md / .json / .png."""
    train = make_trace(300, seed=args.seed + 1000, kind=kind)
    train_file = out_dir / f"alise_{kind}_train_trace.jsonl"
    train_file.write_text("\n".join(json.dumps(r) for r in train))
    policies = {name: ({**cfg, "predictor_options": {"trace_file": str(train_file)}}
                       if cfg.get("predictor") == "retrieval" else cfg)
                for name, cfg in policies.items()}
    trace, arrivals, rate, capacity, mean_out = make_workload(
        step_s, args.load, args.duration, args.max_num_seqs, args.seed, args.requests, kind)
    n = len(trace)
    header = (f"{kind} trace: step {step_s * 1e3:.1f} ms, mean output {mean_out:.0f} tok, "
              f"capacity {capacity:.1f} req/s, offered {rate:.1f} req/s (load {args.load}), "
              f"{n} requests over {arrivals[-1]:.1f} s, max_num_seqs {args.max_num_seqs}, "
              f"{args.repeats} mirrored repeats (median), {args.clock} clock")
    print(header, flush=True)

    names = list(policies)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(args.repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            r = run_phase(engine, sched, trace, arrivals, policies[name], train, tokenizer,
                          step_s if args.clock == "steps" else None)
            runs[name].append(r)
            print(f"[{rep}] {name:18s} mean {r['mean_latency']:.2f}s p50 {r['p50_latency']:.2f}s "
                  f"p99 {r['p99_latency']:.2f}s ttft mean {r['mean_ttft']:.2f}s "
                  f"max wait {r['max_wait']:.2f}s step {r['step_ms']:.2f} ms "
                  f"preempt {r['preempt_length']}/{r['preempt_memory']} "
                  f"declined {r['stats'].get('preempt_declined', 0)}", flush=True)
    results = {name: {m: median([r[m] for r in rs]) for m in METRICS}
               for name, rs in runs.items()}
    table = ["| policy | mean lat (s) | p50 lat | p99 lat | mean TTFT | p50 TTFT | p99 TTFT "
             "| max wait | step ms | pred MAE | pred rho | preempt (len/mem) |",
             "|" + "---|" * 12]
    for name, r in results.items():
        table.append(
            f"| {name} | {r['mean_latency']:.2f} | {r['p50_latency']:.2f} | "
            f"{r['p99_latency']:.2f} | {r['mean_ttft']:.2f} | {r['p50_ttft']:.2f} | "
            f"{r['p99_ttft']:.2f} | {r['max_wait']:.2f} | {r['step_ms']:.2f} | "
            f"{r['prediction_mae']:.1f} | {r['prediction_spearman']:.2f} | "
            f"{r['preempt_length']:.0f}/{r['preempt_memory']:.0f} |")
    table.append("")
    if "FCFS" in results:
        base = results["FCFS"]["mean_latency"]
        table.append("mean-latency speed-up vs FCFS (median of repeats): " + ", ".join(
            f"{n} {base / r['mean_latency']:.2f}x" for n, r in results.items() if n != "FCFS"))
        table.append("per-repeat speed-up: " + "; ".join(
            f"{n} " + "/".join(f"{f['mean_latency'] / r['mean_latency']:.2f}"
                               for f, r in zip(runs["FCFS"], rs))
            for n, rs in runs.items() if n != "FCFS"))
        f = results["FCFS"]
        table.append("p99 latency / max wait vs FCFS: " + ", ".join(
            f"{n} {r['p99_latency'] / f['p99_latency']:.2f}x / {r['max_wait'] / f['max_wait']:.2f}x"
            for n, r in results.items() if n != "FCFS"))
        met = {n: 2 * r["mean_latency"] <= base and r["p99_latency"] <= f["p99_latency"]
               for n, r in results.items() if n != "FCFS"}
        table.append("goal (mean >= 2x lower and p99 <= FCFS's): " + ", ".join(
            f"{n} {'met' if ok else 'not met'}" for n, ok in met.items()))
    cls = 200 if kind == "bimodal" else HEAVY_BUCKETS[-1][0]  # the longest class
    long_ids = [i for i, row in enumerate(trace) if row["output_len"] >= cls]
    parts = []
    for name, rs in runs.items():
        lat = [rs[0]["per_request"][i][0] for i in long_ids if i in rs[0]["per_request"]]
        if lat:
            parts.append(f"{name} {sum(lat) / len(lat):.2f}/{max(lat):.2f}")
    table.append(f"latency of the {len(long_ids)} requests of >= {cls} tokens, mean/max s, first "
                 "repeat: " + ("; ".join(parts) or "none"))
    # Who makes the p99: output lengths of the requests at or above each policy's p99 latency.
    parts = []
    for name, rs in runs.items():
        pr = rs[0]["per_request"]
        cut = percentile([v[0] for v in pr.values()], 99)
        top = sorted(trace[i]["output_len"] for i, v in pr.items() if v[0] >= cut)
        short = sum(1 for x in top if x < 64)
        parts.append(f"{name} {len(top)} requests, {short} of < 64 tokens, lengths "
                     f"{top[0]}-{top[-1]} (median {top[len(top) // 2]})")
    table.append("requests at or above the p99 latency (first repeat): " + "; ".join(parts))
    steps_ms = [r["step_ms"] for rs in runs.values() for r in rs]
    table.append(f"measured (wall) step time per phase {min(steps_ms):.2f}-{max(steps_ms):.2f} ms"
                 f" (calibrated {step_s * 1e3:.2f} ms)" + (
                     ": latencies use the simulated clock (steps x calibrated step)"
                     if args.clock == "steps" else
                     ": a spread beyond ~25% means CPU contention changed the phases"))
    text = "\n".join(table)
    print(text)
    (out_dir / f"alise_{kind}_table.md").write_text(f"{header}\n\n{text}\n")
    (out_dir / f"alise_{kind}.json").write_text(json.dumps(
        {"header": header, "median": results,
         "runs": {k: [{kk: vv for kk, vv in r.items()
                       if kk not in ("latencies", "per_request")} for r in rs]
                  for k, rs in runs.items()}}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        xs = range(len(names))
        for off, key in ((-0.25, "mean_latency"), (0.0, "p50_latency"), (0.25, "p99_latency")):
            a.bar([x + off for x in xs], [results[n][key] for n in names], width=0.25,
                  label=key.replace("_", " "))
        a.set_xticks(list(xs), names, rotation=15)
        a.set_ylabel("seconds")
        a.set_title(f"{kind} trace: request latency (median of repeats)")
        a.legend()
        for n in names:
            lat = sorted(runs[n][0]["latencies"])
            b.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=n)
        b.set_xscale("log")
        b.set_xlabel("latency (s)")
        b.set_ylabel("CDF")
        b.set_title("latency CDF (same arrivals, first repeat)")
        b.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"alise_{kind}.png", dpi=120)
        print("plot:", out_dir / f"alise_{kind}.png")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
