"""``vllm-esp simulate``: run ESP and baselines on a workload in the discrete-event simulator.

With no options it compares ESP (esp_async and lockstep esp) with LoongServe's scheduler and
the baselines on the Mixed workload over a rate sweep (4 instances × TP2, estimated A100
profile) and writes sim_mixed.png. Each run at rate r uses as many requests as arrive in the
workload's arrival window at r (at most -n), so higher rates mean sustained higher load.

Examples::

    vllm-esp simulate                                         # Mixed, every system, a sweep
    vllm-esp simulate --workload sharegpt --rates 10,20,40,80
    vllm-esp simulate --workload leval --search --systems esp_async,loongserve,chunked
    vllm-esp simulate --profile my.json --trace trace.jsonl --systems esp_async  # from file

Only argparse is imported at module level: ``vllm-esp --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_SYSTEMS = "esp_async,esp,loongserve,static_sp,replicas,chunked,chunked_dp,disagg"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("simulate", help="simulate ESP and baselines at cluster scale",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="estimated_a100-80g_lwm-7b-1m_tp2",
                   help="built-in profile name (vllm_esp/planner/profiles) or a JSON path")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help="comma-separated systems (vllm_esp.simulator.systems; "
                        "'chunked@8192' sets a batching system's token budget)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", default="mixed",
                     help="sharegpt | leval | lveval | mixed | zipf<alpha>")
    src.add_argument("--trace", help="JSONL trace (prompt_len, output_len, arrival)")
    src.add_argument("--sharegpt", help="ShareGPT JSON file (lengths ~4 chars/token)")
    p.add_argument("-n", "--num-requests", type=int, default=3000,
                   help="most requests per run (the pool each run takes a prefix of)")
    p.add_argument("--window", type=float, default=None,
                   help="arrival window per run, s (default: the workload's, "
                        "simulator/compare.py WINDOWS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", default=None,
                   help="comma-separated req/s (default: 5 rates over the workload's range)")
    p.add_argument("--search", action="store_true",
                   help="search each system's max rate meeting the SLO instead of a sweep")
    p.add_argument("--sustained", action="store_true",
                   help="a run passes only if every request is done by 1.5 × its last "
                        "arrival (keeps up), besides LoongServe's mean-latency SLO")
    p.add_argument("--slo", default=None,
                   help="per,input,output ms/token (default: LoongServe's for the workload)")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--kv-tokens", type=int, default=None,
                   help="KV tokens per instance (default: from 80 GB GPUs and the profile)")
    p.add_argument("--token-budget", type=int, default=None,
                   help="batching systems' tokens per iteration (default: vLLM's serving "
                        "default for the profile's GPU)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="max_tokens every client sends (default: each request's output "
                        "length, as benchmark clients with ignore_eos do)")
    p.add_argument("--prefill-instances", type=int, default=None)
    p.add_argument("--plot", default=None,
                   help="latency-vs-rate PNG path (default: sim_<workload>.png)")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(func=main)
    return p


def _load_cost(name: str):
    from pathlib import Path

    from vllm_esp.planner import CostModel
    from vllm_esp.planner.cost_model import load_builtin

    return CostModel.load(name) if Path(name).exists() else load_builtin(name)


def _requests(args):
    from vllm_esp.workloads import generate, load_jsonl, load_sharegpt

    if args.trace:
        return load_jsonl(args.trace), "trace"
    if args.sharegpt:
        return load_sharegpt(args.sharegpt, args.num_requests, args.seed), "sharegpt"
    return generate(args.workload, args.num_requests, args.seed), args.workload


def main(args: argparse.Namespace) -> int:
    from vllm_esp.metrics import LOONGSERVE_SLOS, SLO
    from vllm_esp.simulator.systems import ClusterSpec, kv_tokens_from_memory, parse_system

    try:
        cost = _load_cost(args.profile)
    except (OSError, ValueError, KeyError) as e:  # missing file or name, empty or bad fit
        print(f"vllm-esp simulate: error: --profile {args.profile}: {e}", file=sys.stderr)
        return 2
    spec = ClusterSpec(args.instances, args.kv_tokens or kv_tokens_from_memory(cost),
                       token_budget=args.token_budget, prefill_instances=args.prefill_instances,
                       max_tokens=args.max_tokens)
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        parse_system(s)  # a bad name fails here, before any run
    reqs, name = _requests(args)
    if args.slo:
        slo = SLO.from_ms(*(float(x) for x in args.slo.split(",")))
    else:
        slo = LOONGSERVE_SLOS.get(name, LOONGSERVE_SLOS["mixed"])
    print(f"profile {cost.meta.model} ({cost.meta.source}, {cost.meta.device}); "
          f"{spec.num_instances} instances × {spec.kv_tokens_per_instance} KV tokens; "
          f"{len(reqs)} requests of {name}; SLO ms/token {slo.per_token * 1e3:g}/"
          f"{slo.input_token * 1e3:g}/{slo.output_token * 1e3:g}")
    if args.trace:
        curves, maxima = _replay(systems, cost, spec, reqs), {}
    else:
        curves, maxima = _rates(args, systems, cost, spec, name, reqs, slo)
    if not args.no_plot and not args.trace:
        from vllm_esp.metrics.plots import plot_latency_vs_rate

        path = args.plot or f"sim_{name}.png"
        title = (f"{name}: {spec.num_instances} instances, {cost.meta.model} "
                 f"({cost.meta.source} {cost.meta.device})")
        print("wrote", plot_latency_vs_rate(curves, path, title, slo, maxima))
    return 0


def _replay(systems, cost, spec, reqs):
    """A trace's own arrivals, once per system."""
    import math

    from vllm_esp.metrics import summarize, summary_table
    from vllm_esp.simulator.compare import run_spec
    from vllm_esp.simulator.core import run
    from vllm_esp.simulator.systems import build

    rows, curves = [], {}
    for system in systems:
        rs = run_spec(system, cost, spec, None)
        engines, route = build(system, cost, spec, loongserve_cfg=rs.loongserve_cfg)
        s = summarize(run(reqs, engines, route))
        rows.append((system, math.nan, s))
        curves[system] = {0.0: s}
    print(summary_table(rows))
    return curves


def _rates(args, systems, cost, spec, name, reqs, slo):
    """A rate sweep or a max-rate search, each run over the workload's arrival window."""
    from tqdm import tqdm

    from vllm_esp.metrics import markdown_table, summary_table
    from vllm_esp.simulator import compare as cmp
    from vllm_esp.workloads import rate_sweep

    window = args.window or cmp.WINDOWS.get(name, cmp.DEFAULT_WINDOW)
    if args.rates:
        rates = [float(x) for x in args.rates.split(",")]
    else:
        rates = rate_sweep(*cmp.SWEEPS.get(name, cmp.DEFAULT_SWEEP), 5)
    dataset = name if name in cmp.WINDOWS else None
    if args.search:
        bar = tqdm(total=len(systems), desc="searches")
        comp = cmp.Comparison(name)
        start = min(rates[0], len(reqs) / window)
        for system in systems:
            one = cmp.compare([system], cost, spec, dataset, reqs, slo, window, start,
                              seed=args.seed,
                              on_eval=lambda s, r, summ, ok: bar.set_postfix(rate=f"{r:.3g}"),
                              sustained=args.sustained)
            comp.results.update(one.results)
            bar.update(1)
        bar.close()
        curves = {s: r.evaluations for s, r in comp.results.items()}
        maxima = {s: r.max_rate for s, r in comp.results.items()}
    else:
        bar = tqdm(total=len(systems) * len(rates), desc="runs")
        curves = cmp.sweep_systems(systems, cost, spec, dataset, reqs, rates, window,
                                   seed=args.seed, on_run=lambda s, r, summ: bar.update(1),
                                   sustained=args.sustained)
        bar.close()
        maxima = {s: max([r for r, v in pts.items() if slo.met_by(v)], default=0.0)
                  for s, pts in curves.items()}
    print(summary_table([(s, r, v) for s, pts in curves.items() for r, v in sorted(pts.items())]))
    kind = "max rate under SLO" if args.search else "highest swept rate meeting the SLO"
    rows = [[s, maxima[s]] for s in systems]
    print(markdown_table(["system", f"{kind} (req/s)"], rows))
    base = {s: v for s, v in maxima.items() if s not in cmp.ESP_SYSTEMS}
    if "esp_async" in maxima and base:
        best = max(base, key=lambda s: (base[s], s))
        ratio = maxima["esp_async"] / base[best] if base[best] > 0 else float("inf")
        print(f"esp_async / best baseline ({best}): {ratio:.3g}")
    return curves, maxima
