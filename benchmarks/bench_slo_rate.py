"""Max request rate under a latency SLO: FCFS vs SJF(oracle) vs ALISE(online, retrieval) on the
real vLLM CPU engine (issue 21, item 4). ALISE's own claim is throughput at a latency target.

One engine (bench_alise's: tiny float32 Llama, stock executor, ``AliseScheduler`` as
``--scheduler-cls``, ``max_num_seqs`` 4), bench_alise's traces and simulated clock (each engine
step advances time by the calibrated step, so other jobs on the machine cannot change the
comparison; the engine, scheduler, predictors, preemptions and swaps all run for real). For every
offered load in ``--loads`` (a fraction of the capacity ``max_num_seqs`` / (step x mean output
length)) the same trace is replayed for every policy with the same arrivals: one Poisson
sequence, scaled to the rate, over ``--duration`` s (default 5 s of bimodal and 10 s of heavy
arrivals: the heavy trace's FCFS queues come from its rare long requests colliding, which a
shorter run rarely sees; in the idealized replay of alise_frontier.py FCFS's max load at the
headline SLO is 0.83 with 5 s and 0.66 with 10 or 15 s, while the bimodal one is 0.69-0.71 for
5, 10 or 15 s). Loads above 1.0 exceed the capacity: no
order is stable there, and a finite run lets an order that defers the longest requests keep
its p90 low for the run's duration; the report marks those rates.

The retrieval process runs at the engine's CPU priority here (``--retrieval-priority``): with
the simulated clock its CPU use cannot change the measured latencies, only how soon its
predictions arrive; at the serving default (idle) on a saturated machine none arrives before its
request finishes and the ALISE (retrieval) rows equal ALISE (online)'s.

SLO: the p90 of the normalised latency (latency / output tokens, s per token) at most ``S`` x the
step time. Max rate = the highest rate before the first load that misses the SLO, interpolated
linearly between the last load that meets it and the first that misses it ("> x" when every
load meets it: the true maximum is above the grid). Reported for several S (``--slos``; the
first is the headline), with mean and p99 latency per load.

    python benchmarks/bench_slo_rate.py                 # ~12 min on 2 cores (idle machine)
    python benchmarks/bench_slo_rate.py --traces heavy --loads 0.6,0.8,1.0 --duration 3
    python benchmarks/bench_slo_rate.py --report benchmarks/results/slo_rate.json  # re-plot

Writes benchmarks/results/slo_rate.{json,md} and slo_rate_<trace>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_alise import (TRACES, build_engine, calibrate_step, make_trace,  # noqa: E402
                         make_workload, percentile, run_phase)

POLICIES = {
    "fcfs": ("FCFS", {"policy": "fcfs", "predictor": "online", "swap": "off"}),
    "sjf": ("SJF (oracle)", {"policy": "sjf", "predictor": "oracle", "swap": "off"}),
    "alise-online": ("ALISE (online)", {"policy": "alise", "predictor": "online"}),
    "alise-retrieval": ("ALISE (retrieval)", {"policy": "alise", "predictor": "retrieval"}),
}


def parse_durations(text: str, kinds: list[str]) -> dict[str, float]:
    """``"5"`` (every trace) or ``"bimodal=5,heavy=10"``."""
    if "=" not in text:
        return {k: float(text) for k in kinds}
    given = {k: float(v) for k, v in (part.split("=") for part in text.split(","))}
    missing = [k for k in kinds if k not in given]
    if missing:
        raise ValueError(f"--duration has no value for {', '.join(missing)}")
    return given


def phase_metrics(r: dict, trace: list[dict], step_s: float) -> dict:
    lat = {i: v[0] for i, v in r["per_request"].items()}
    norm = [lat[i] / trace[i]["output_len"] for i in lat]
    return {"p90_norm_steps": percentile(norm, 90) / step_s, "mean_latency": r["mean_latency"],
            "p99_latency": r["p99_latency"], "mean_ttft": r["mean_ttft"],
            "max_wait": r["max_wait"], "finished": r["finished"], "requests": len(trace),
            "scheduled_provisional": r.get("scheduled_provisional", 0),
            "prediction_late": r["stats"].get("prediction_late", 0),
            "preempt_length": r["preempt_length"], "wall_step_ms": r["step_ms"]}


def max_load(points: list[tuple[float, float]], slo: float) -> tuple[float, bool]:
    """(max load meeting the SLO, censored) from ascending (load, p90) points: the last load
    before the first miss, interpolated linearly toward the miss; 0 if the first load misses;
    censored=True when no load misses (the maximum is above the grid)."""
    last = None
    for load, p90 in points:
        if p90 > slo:
            if last is None:
                return 0.0, False
            l0, p0 = last
            frac = (slo - p0) / (p90 - p0) if p90 > p0 else 0.0
            return l0 + frac * (load - l0), False
        last = (load, p90)
    return points[-1][0], True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default="bimodal,heavy")
    ap.add_argument("--loads", default="0.7,0.8,0.9,1.0,1.1,1.2")
    ap.add_argument("--duration", default="bimodal=5,heavy=10",
                    help="seconds of arrivals per run: one number, or per trace")
    ap.add_argument("--slos", default="10,5,20,40",
                    help="p90 normalised-latency SLOs in step times (first = headline)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--max-num-seqs", type=int, default=4)
    ap.add_argument("--step-ms", type=float, default=1.53,
                    help="simulated step (default: the one bench_alise's tables pinned); 0 = calibrate")
    ap.add_argument("--retrieval-priority", default="0",
                    help="worker_priority of the retrieval process: 0 (the engine's, default "
                         "here: with the simulated clock its CPU use cannot change the measured "
                         "latencies, and at 'idle' on a saturated machine no prediction arrives "
                         "in time) or 'idle' (the serving default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--report", default=None,
                    help="only rebuild the report and plots from a slo_rate.json of a past run")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        report_only(saved, Path(args.out))
        return
    if args.retrieval_priority != "idle":
        args.retrieval_priority = int(args.retrieval_priority)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = sorted(float(x) for x in args.loads.split(","))
    slos = [float(x) for x in args.slos.split(",")]
    keys = args.policies.split(",")
    for k in keys:
        if k not in POLICIES:
            ap.error(f"unknown policy {k!r}; expected some of {', '.join(POLICIES)}")
    kinds = args.traces.split(",")
    for kind in kinds:
        if kind not in TRACES:
            ap.error(f"unknown trace {kind!r}; expected some of {TRACES}")
    try:
        durations = parse_durations(args.duration, kinds)
    except ValueError as e:
        ap.error(str(e))
    t_start = time.time()
    engine, sched, tokenizer = build_engine(out, args.max_num_seqs)
    step_s = calibrate_step(engine, args.max_num_seqs)  # also warms the engine up
    print(f"calibrated step {step_s * 1e3:.2f} ms" + (
        f"; using --step-ms {args.step_ms}" if args.step_ms else ""))
    if args.step_ms:
        step_s = args.step_ms / 1e3
    cost = {"decode_s_per_token": step_s}
    results = {}
    for kind in kinds:
        train = make_trace(300, seed=args.seed + 1000, kind=kind)
        train_file = out / f"slo_{kind}_train_trace.jsonl"
        train_file.write_text("\n".join(json.dumps(r) for r in train))
        res = results[kind] = {POLICIES[k][0]: {} for k in keys}
        for load in loads:
            trace, arrivals, rate, capacity, _ = make_workload(
                step_s, load, durations[kind], args.max_num_seqs, args.seed, kind=kind)
            for k in keys:
                name, cfg = POLICIES[k]
                cfg = {**cfg, **cost}
                if cfg["predictor"] == "retrieval":
                    cfg["predictor_options"] = {"trace_file": str(train_file),
                                                "worker_priority": args.retrieval_priority}
                r = run_phase(engine, sched, trace, arrivals, cfg, train, tokenizer, step_s)
                m = res[name][load] = {**phase_metrics(r, trace, step_s), "rate": rate}
                print(f"{kind} load {load:.2f} ({rate:.1f} req/s, {len(trace)} req) {name:18s} "
                      f"p90 norm {m['p90_norm_steps']:.1f} steps, mean {m['mean_latency']:.3f} "
                      f"p99 {m['p99_latency']:.3f} s, provisional {m['scheduled_provisional']}, "
                      f"late {m['prediction_late']}, "
                      f"wall step {m['wall_step_ms']:.1f} ms [{time.time() - t_start:.0f} s]",
                      flush=True)
                results[kind]["_capacity"] = capacity
                (out / "slo_rate.json").write_text(json.dumps(  # so far, for --report
                    {"args": vars(args), "step_s": step_s, "results": results}, indent=1))
    report = summarize(results, keys, loads, slos, step_s)
    print(report)
    (out / "slo_rate.md").write_text(report + "\n")
    (out / "slo_rate.json").write_text(json.dumps(
        {"args": vars(args), "step_s": step_s, "results": results}, indent=1))
    plot(results, keys, slos, step_s, out)
    print(f"total {time.time() - t_start:.0f} s")


def _within(n, res, loads, slo, cap, names) -> str:
    ld, cens = max_load([(x, res[n][x]["p90_norm_steps"]) for x in loads], slo)
    base, bcens = max_load([(x, res["FCFS"][x]["p90_norm_steps"]) for x in loads], slo) \
        if "FCFS" in names else (0.0, False)
    txt = f"{n} {'> ' if cens else ''}{ld * cap:.1f} req/s"
    if n != "FCFS" and base > 0:
        txt += f" ({'>= ' if cens and not bcens else ''}{ld / base:.2f}x)"
    return txt


def report_only(saved: dict, out: Path) -> None:
    """Report and plots of a saved run (JSON turns the load keys into strings)."""
    a = saved["args"]
    keys = a["policies"].split(",")
    results = {kind: {n: ({float(ld): m for ld, m in v.items()} if isinstance(v, dict) else v)
                      for n, v in res.items()} for kind, res in saved["results"].items()}
    loads = sorted(float(x) for x in a["loads"].split(","))
    slos = [float(x) for x in a["slos"].split(",")]
    out.mkdir(parents=True, exist_ok=True)
    report = summarize(results, keys, loads, slos, saved["step_s"])
    print(report)
    (out / "slo_rate.md").write_text(report + "\n")
    plot(results, keys, slos, saved["step_s"], out)


def summarize(results, keys, loads, slos, step_s) -> str:
    names = [POLICIES[k][0] for k in keys]
    lines = []
    all_names, all_loads = names, loads
    for kind, res in results.items():
        cap = res["_capacity"]
        # an interrupted run (incremental JSON): the policies it reached, at the loads all have
        names = [n for n in all_names if n in res]
        loads = [ld for ld in all_loads if all(ld in res[n] for n in names)]
        lines += [f"\n### {kind} trace (capacity {cap:.1f} req/s, step {step_s * 1e3:.2f} ms)", "",
                  "| policy | " + " | ".join(f"max rate @ p90 <= {s:g} steps/token" for s in slos)
                  + " |", "|---|" + "---|" * len(slos)]
        maxes = {}
        for n in names:
            pts = [(ld, res[n][ld]["p90_norm_steps"]) for ld in loads]
            maxes[n] = [max_load(pts, s) for s in slos]
        base = maxes.get("FCFS")
        for n in names:
            cells = []
            for i, (ld, cens) in enumerate(maxes[n]):
                txt = f"{'> ' if cens else ''}{ld * cap:.1f} req/s (load {ld:.2f})"
                if base and n != "FCFS" and base[i][0] > 0:
                    txt += f", {'>= ' if cens and not base[i][1] else ''}{ld / base[i][0]:.2f}x"
                cells.append(txt)
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        within = [ld for ld in loads if ld <= 1.0 + 1e-9]
        if within != loads and within:
            lines += ["", f"Within capacity (loads <= 1.0 only), p90 <= {slos[0]:g} steps/token: " +
                      ", ".join(_within(n, res, within, slos[0], cap, names) for n in names)]
        lines += ["", "Above capacity (load > 1) a rate is met only for the run's duration.", "",
                  "| policy | load | p90 norm (steps/token) | mean (s) | p99 (s) | mean TTFT | "
                  "max wait | preempt | started provisional | finished before prediction |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for ld in loads:
            for n in names:
                m = res[n][ld]
                lines.append(f"| {n} | {ld:.2f} | {m['p90_norm_steps']:.1f} | "
                             f"{m['mean_latency']:.3f} | {m['p99_latency']:.3f} | "
                             f"{m['mean_ttft']:.3f} | {m['max_wait']:.2f} | "
                             f"{m['preempt_length']} | {m['scheduled_provisional']} | "
                             f"{m['prediction_late']} |")
    return "\n".join(lines)


def plot(results, keys, slos, step_s, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    for kind, res in results.items():
        fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
        for k in keys:
            n = POLICIES[k][0]
            pts = sorted((m["rate"], m) for m in res[n].values())
            a.plot([r for r, _ in pts], [m["p90_norm_steps"] * step_s * 1e3 for _, m in pts],
                   marker="o", label=n)
            b.plot([r for r, _ in pts], [m["mean_latency"] for _, m in pts], marker="o", label=n)
        for s in slos[:1]:
            a.axhline(s * step_s * 1e3, color="grey", ls="--", label=f"SLO ({s:g} steps)")
        for ax in (a, b):
            ax.axvline(res["_capacity"], color="black", ls=":", lw=1, label="capacity")
        a.set_yscale("log")
        a.set_xlabel("request rate (req/s)")
        a.set_ylabel("p90 normalised latency (ms / token)")
        a.set_title(f"{kind} trace: SLO attainment vs rate")
        a.legend()
        b.set_yscale("log")
        b.set_xlabel("request rate (req/s)")
        b.set_ylabel("mean latency (s)")
        b.set_title("mean latency vs rate (same arrivals, scaled)")
        b.legend()
        fig.tight_layout()
        fig.savefig(out / f"slo_rate_{kind}.png", dpi=120)
        print("plot:", out / f"slo_rate_{kind}.png")


if __name__ == "__main__":
    main()
