"""``vllm-esp simulate``: run ESP and baselines on a workload in the discrete-event simulator.

Examples::

    vllm-esp simulate --profile PROFILE --workload mixed -n 300 --rates 0.2,0.5,1
    vllm-esp simulate --profile PROFILE --workload leval --search --systems esp,chunked
    vllm-esp simulate --profile my.json --trace trace.jsonl --systems esp   # arrivals from file

Only argparse is imported at module level: ``vllm-esp --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("simulate", help="simulate ESP and baselines at cluster scale",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True,
                   help="built-in profile name (vllm_esp/planner/profiles) or a JSON path")
    p.add_argument("--systems", default="esp,static_sp,replicas,chunked,chunked_dp,disagg",
                   help="comma-separated systems (see vllm_esp.simulator.systems)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", default="mixed",
                     help="sharegpt | leval | lveval | mixed | zipf<alpha>")
    src.add_argument("--trace", help="JSONL trace (prompt_len, output_len, arrival)")
    src.add_argument("--sharegpt", help="ShareGPT JSON file (lengths ~4 chars/token)")
    p.add_argument("-n", "--num-requests", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", default="1.0", help="comma-separated req/s (ignored with --trace)")
    p.add_argument("--search", action="store_true",
                   help="search the max rate meeting the SLO instead of a fixed sweep")
    p.add_argument("--slo", default=None,
                   help="per,input,output ms/token (default: LoongServe's for the workload)")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--kv-tokens", type=int, default=None,
                   help="KV tokens per instance (default: from 80 GB GPUs and the profile)")
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--prefill-instances", type=int, default=None)
    p.add_argument("--plot", help="write a latency-vs-rate PNG here")
    p.set_defaults(func=main)
    return p


def _load_cost(name: str):
    from pathlib import Path

    from vllm_esp.planner import CostModel
    from vllm_esp.planner.cost_model import load_builtin

    return CostModel.load(name) if Path(name).exists() else load_builtin(name)


def main(args: argparse.Namespace) -> int:
    import math

    from tqdm import tqdm

    from vllm_esp.metrics import LOONGSERVE_SLOS, SLO, summarize, summary_table
    from vllm_esp.simulator.core import run
    from vllm_esp.simulator.runner import RunSpec, search_max_rate, sweep
    from vllm_esp.simulator.systems import ClusterSpec, build, kv_tokens_from_memory
    from vllm_esp.workloads import generate, load_jsonl, load_sharegpt

    try:
        cost = _load_cost(args.profile)
    except (OSError, ValueError, KeyError) as e:  # missing file or name, empty or bad fit
        print(f"vllm-esp simulate: error: --profile {args.profile}: {e}", file=sys.stderr)
        return 2
    spec = ClusterSpec(args.instances, args.kv_tokens or kv_tokens_from_memory(cost),
                       token_budget=args.token_budget, prefill_instances=args.prefill_instances)
    systems = [s for s in args.systems.split(",") if s]
    name = args.workload
    if args.trace:
        reqs, name = load_jsonl(args.trace), "trace"
    elif args.sharegpt:
        reqs, name = load_sharegpt(args.sharegpt, args.num_requests, args.seed), "sharegpt"
    else:
        reqs = generate(args.workload, args.num_requests, args.seed)
    if args.slo:
        slo = SLO.from_ms(*(float(x) for x in args.slo.split(",")))
    else:
        slo = LOONGSERVE_SLOS.get(name, LOONGSERVE_SLOS["mixed"])
    print(f"profile {cost.meta.model} ({cost.meta.source}, {cost.meta.device}); "
          f"{spec.num_instances} instances × {spec.kv_tokens_per_instance} KV tokens; "
          f"{len(reqs)} requests of {name}; SLO ms/token {slo.per_token * 1e3:g}/"
          f"{slo.input_token * 1e3:g}/{slo.output_token * 1e3:g}")

    rows, curves = [], {}
    if args.trace:
        for system in tqdm(systems, desc="systems"):
            engines, route = build(system, cost, spec)
            s = summarize(run(reqs, engines, route))
            rows.append((system, math.nan, s))
            curves[system] = {0.0: s}
    else:
        rates = [float(x) for x in args.rates.split(",")]
        bar = tqdm(total=len(systems) * (1 if args.search else len(rates)), desc="runs")
        maxima = {}
        for system in systems:
            rs = RunSpec(system, cost, spec, args.seed)
            if args.search:
                res = search_max_rate(rs, reqs, slo, start=rates[0],
                                      on_eval=lambda r, s, ok: bar.set_postfix(rate=f"{r:.3g}"))
                maxima[system], curves[system] = res.max_rate, res.evaluations
                bar.update(1)
            else:
                curves[system] = sweep(rs, reqs, rates, on_run=lambda r, s: bar.update(1))
            rows += [(system, r, s) for r, s in sorted(curves[system].items())]
        bar.close()
        if maxima:
            print("max rate under SLO (req/s): " +
                  ", ".join(f"{k} {v:.3g}" for k, v in maxima.items()))
    print(summary_table(rows))
    if args.plot:
        from vllm_esp.metrics.plots import plot_latency_vs_rate

        print("wrote", plot_latency_vs_rate(curves, args.plot, name, slo))
    return 0
