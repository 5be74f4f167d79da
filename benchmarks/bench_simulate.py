"""Max rate under the LoongServe SLOs, ESP vs LoongServe's scheduler and baselines (simulated).

Setup of LoongServe's Fig. 10: 8 GPUs as 4 instances of TP=2, LWM-1M-Text 7B, the planner's
*estimated* A100-80G profile for it, KV capacity from 80 GB GPUs. For each dataset and system
the max Poisson rate whose mean per-token / input-token / output-token latencies all meet the
dataset's SLO (LoongServe's thresholds) is found by search over runs of a fixed arrival window
(vllm_esp/simulator/compare.py); every run also becomes a point of the latency-vs-rate PNG
(benchmarks/results/sim_<dataset>.png). Batching baselines run with vLLM's serving token
budget for the GPU and with each ``--budgets`` value (``chunked@8192`` ...); the best baseline
is the best of all of them. ``loongserve`` runs with LoongServe's evaluation settings.

Two criteria (``--criteria``): ``window`` is LoongServe's (the mean latencies of the window's
requests, served to the end: a system that falls behind still passes if short requests go
first and long ones wait for hours); ``sustained`` also requires every request done by 1.5 ×
the window (compare.SUSTAINED), i.e. the system keeps up with the arrivals.

    python benchmarks/bench_simulate.py                 # all datasets, all systems
    python benchmarks/bench_simulate.py --datasets leval --systems esp_async,chunked
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Requests per run = rate × window (at least MIN_N, at most --max-n): a fixed arrival window
# (simulator/compare.py WINDOWS: ShareGPT 60 s, L-Eval 300 s, LV-Eval 1200 s, Mixed 600 s).
MIN_N, MAX_N = 40, 12000
SYSTEMS = "esp_async,esp,loongserve,static_sp,replicas,chunked,chunked_dp,disagg"
PAPER = "LoongServe (paper): up to 3.85x vs chunked prefill, 5.81x vs disaggregation"
RESULTS = Path(__file__).parent / "results"


def with_budgets(systems: list[str], budgets: list[int]) -> list[str]:
    """Each batching system once per extra token budget (``chunked@8192``)."""
    from vllm_esp.simulator.systems import BATCHING

    return systems + [f"{s}@{b}" for s in systems if s in BATCHING for b in budgets]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="estimated_a100-80g_lwm-7b-1m_tp2")
    p.add_argument("--datasets", default="sharegpt,leval,lveval,mixed")
    p.add_argument("--systems", default=SYSTEMS)
    p.add_argument("--budgets", default="8192,16384",
                   help="extra token budgets for the batching systems ('' for none)")
    p.add_argument("--duration-scale", type=float, default=1.0,
                   help="scale the arrival windows (simulator/compare.py WINDOWS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rel-tol", type=float, default=0.1)
    p.add_argument("--criteria", default="window,sustained",
                   help="window (LoongServe's), sustained (also keep up), or both")
    p.add_argument("--max-n", type=int, default=MAX_N,
                   help="most requests per run (caps the searchable rate at max_n / window)")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from vllm_esp.metrics import LOONGSERVE_SLOS, markdown_table
    from vllm_esp.metrics.plots import plot_latency_vs_rate
    from vllm_esp.planner.cost_model import load_builtin
    from vllm_esp.simulator.compare import START_RATES, WINDOWS, compare
    from vllm_esp.simulator.systems import ClusterSpec, kv_tokens_from_memory, serving_defaults
    from vllm_esp.workloads import generate

    cost = load_builtin(args.profile)
    spec = ClusterSpec(num_instances=4, kv_tokens_per_instance=kv_tokens_from_memory(cost))
    datasets = args.datasets.split(",")
    budgets = [int(b) for b in args.budgets.split(",") if b]
    systems = with_budgets(args.systems.split(","), budgets)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"profile {args.profile} ({cost.meta.source}); {spec}; vLLM serving budget/seqs "
          f"{serving_defaults(cost)}")
    criteria = args.criteria.split(",")
    table, texts = {}, []
    bar = tqdm(total=len(criteria) * len(datasets) * len(systems), desc="searches")
    t0 = time.time()
    for crit in criteria:
        if crit not in ("window", "sustained"):
            raise ValueError(f"--criteria: window or sustained, got {crit!r}")
        comps, cpu = {}, {}
        for ds in datasets:
            pool = generate(ds, args.max_n, args.seed)  # each run uses a prefix: same requests
            window = WINDOWS[ds] * args.duration_scale
            comp = None
            for system in systems:
                bar.set_description(f"{crit}/{ds}/{system}")
                c0 = time.process_time()
                one = compare([system], cost, spec, ds, pool, LOONGSERVE_SLOS[ds], window,
                              START_RATES[ds], MIN_N, args.max_n, args.rel_tol, args.seed,
                              on_eval=lambda s, r, summ, ok: bar.set_postfix(rate=f"{r:.3g}",
                                                                            ok=ok),
                              sustained=crit == "sustained")
                cpu[(ds, system)] = time.process_time() - c0
                if comp is None:
                    comp = one
                else:
                    comp.results.update(one.results)
                bar.update(1)
            comps[ds] = comp
            table.setdefault(crit, {})[ds] = {s: r.max_rate for s, r in comp.results.items()}
            plot_latency_vs_rate({s: r.evaluations for s, r in comp.results.items()},
                                 RESULTS / f"sim_{ds}_{crit}.png",
                                 f"{ds} ({crit} criterion; simulated, {cost.meta.model}, 4×TP2)",
                                 LOONGSERVE_SLOS[ds],
                                 {s: r.max_rate for s, r in comp.results.items()})
        texts.append(f"### criterion: {crit}\n\n" + report(comps, systems, cpu))
    bar.close()
    text = "\n\n".join(texts)
    print(text)
    print(PAPER)
    print(f"wall time {time.time() - t0:.0f} s")
    (RESULTS / "sim_max_rate.md").write_text(text + "\n\n" + PAPER + "\n")
    (RESULTS / "sim_max_rate.json").write_text(json.dumps(table, indent=1))
    return 0


def report(comps: dict, systems: list[str], cpu: dict) -> str:
    """Max rates (≥: the search hit the request cap), then ESP's ratios."""
    from vllm_esp.metrics import markdown_table

    rows = []
    for ds, comp in comps.items():
        cells = [(("≥%.3g" % comp.rate(s)) if comp.results[s].capped else comp.rate(s))
                 for s in systems]
        rows.append([ds] + cells)
    rates = markdown_table(["max rate (req/s)"] + systems, rows)
    ratio_rows = []
    for ds, comp in comps.items():
        if "esp_async" not in comp.results or len(comp.results) < 2:
            continue
        best, best_rate = comp.best_baseline()
        row = [ds, comp.rate("esp_async"), f"{best} {best_rate:.3g}",
               comp.ratio("esp_async", best)]
        row += [comp.ratio("esp_async", "loongserve")] if "loongserve" in comp.results else ["-"]
        row += [comp.ratio("esp", best)] if "esp" in comp.results else ["-"]
        ratio_rows.append(row)
    ratios = markdown_table(["dataset", "esp_async", "best baseline", "esp_async / best",
                             "esp_async / loongserve", "esp (lockstep) / best"], ratio_rows)
    times = markdown_table(["CPU s per search"] + systems,
                           [[ds] + [round(cpu[(ds, s)], 1) for s in systems] for ds in comps])
    return "\n\n".join([rates] + ([ratios] if ratio_rows else []) + [times])


if __name__ == "__main__":
    sys.exit(main())
