"""Max request rate under the LoongServe SLOs, ESP vs baselines, in the simulator (paper setup).

Setup of LoongServe's Fig. 10: 8 GPUs as 4 instances of TP=2, LWM-1M-Text 7B, the planner's
*estimated* A100-80G profile for it, KV capacity from 80 GB GPUs. For each dataset and system
the max Poisson rate whose mean per-token / input-token / output-token latencies all meet the
dataset's SLO (LoongServe's thresholds) is found by search; every run of the search also
becomes a point of the latency-vs-rate PNG (benchmarks/results/sim_<dataset>.png).

    python benchmarks/bench_simulate.py                 # all datasets, all systems (~10 min)
    python benchmarks/bench_simulate.py --datasets leval --systems esp_async,chunked
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Requests per run = rate × DURATION (at least MIN_N, at most MAX_N): a fixed arrival window,
# as a fixed request count lets a burst of a few hundred requests "meet" the SLO at any rate.
DURATION = {"sharegpt": 60.0, "leval": 300.0, "lveval": 1200.0, "mixed": 600.0}  # s
MIN_N, MAX_N = 40, 2500
START_RATE = {"sharegpt": 4.0, "leval": 0.5, "lveval": 0.05, "mixed": 0.2}  # req/s guesses
PAPER = "LoongServe (paper): up to 3.85x vs chunked prefill, 5.81x vs disaggregation"
RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="estimated_a100-80g_lwm-7b-1m_tp2")
    p.add_argument("--datasets", default="sharegpt,leval,lveval,mixed")
    p.add_argument("--systems",
                   default="esp_async,esp,static_sp,replicas,chunked,chunked_dp,disagg")
    p.add_argument("--duration-scale", type=float, default=1.0,
                   help="scale the arrival windows (%s s)" % DURATION)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rel-tol", type=float, default=0.1)
    p.add_argument("--max-n", type=int, default=MAX_N,
                   help="most requests per run (caps the searchable rate at max_n / window)")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from vllm_esp.metrics import LOONGSERVE_SLOS, markdown_table
    from vllm_esp.metrics.plots import plot_latency_vs_rate
    from vllm_esp.planner.cost_model import load_builtin
    from vllm_esp.simulator.runner import RunSpec, search_max_rate
    from vllm_esp.simulator.systems import ClusterSpec, kv_tokens_from_memory
    from vllm_esp.workloads import generate

    cost = load_builtin(args.profile)
    spec = ClusterSpec(num_instances=4, kv_tokens_per_instance=kv_tokens_from_memory(cost))
    datasets = args.datasets.split(",")
    systems = args.systems.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"profile {args.profile} ({cost.meta.source}); {spec}")
    table: dict[str, dict[str, float]] = {}
    capped: set[tuple[str, str]] = set()  # searches that hit the MAX_N cap (true max higher)
    bar = tqdm(total=len(datasets) * len(systems), desc="searches")
    t0 = time.time()
    for ds in datasets:
        pool = generate(ds, args.max_n, args.seed)  # each run uses a prefix: same requests
        window = DURATION[ds] * args.duration_scale
        slo = LOONGSERVE_SLOS[ds]
        curves = {}
        for system in systems:
            bar.set_description(f"{ds}/{system}")
            rs = RunSpec(system, cost, spec, args.seed)
            start = START_RATE[ds]
            res = search_max_rate(rs, pool, slo, start=start, rel_tol=args.rel_tol,
                                  n_for_rate=lambda r: min(args.max_n, max(MIN_N, int(r * window))),
                                  hi=args.max_n / window,
                                  on_eval=lambda r, s, ok: bar.set_postfix(rate=f"{r:.3g}",
                                                                          ok=ok))
            table.setdefault(ds, {})[system] = res.max_rate
            if res.capped:
                capped.add((ds, system))
            curves[system] = res.evaluations
            bar.update(1)
        plot_latency_vs_rate(curves, RESULTS / f"sim_{ds}.png",
                             f"{ds} (simulated, {cost.meta.model}, 4×TP2)", slo)
    bar.close()

    ref = "esp_async" if "esp_async" in systems else systems[0]
    headers = ["dataset"] + [f"{s} req/s" for s in systems] + [
        f"{ref}/{s}" for s in systems if s != ref]
    rows = []
    for ds in datasets:
        r = table[ds]
        ratios = [(r[ref] / r[s]) if r[s] > 0 else float("inf") for s in systems if s != ref]
        cells = [("≥%.3g" % r[s]) if (ds, s) in capped else r[s] for s in systems]
        rows.append([ds] + cells + ratios)
    text = markdown_table(headers, rows)
    print(text)
    print(PAPER)
    print(f"wall time {time.time() - t0:.0f} s")
    (RESULTS / "sim_max_rate.md").write_text(text + "\n\n" + PAPER + "\n")
    (RESULTS / "sim_max_rate.json").write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
