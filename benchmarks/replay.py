"""Replay a workload against a running OpenAI-compatible server and report the simulator's table.

    # against any server (ESP or stock vLLM) already listening:
    python benchmarks/replay.py --base-url http://localhost:8000/v1 --model M \
        --workload sharegpt -n 100 --rates 0.5,1,2 --plot benchmarks/results/real.png

    # cross-check the simulator: start stock vLLM on the tiny CPU model, replay a small trace,
    # simulate the same trace with a measured CPU profile, report the mean-latency error:
    python benchmarks/replay.py --crosscheck --profile PROFILE_NAME_OR_JSON

The cross-check uses the ``chunked`` system with one instance: stock vLLM V1 on one instance
*is* a chunked-prefill continuous-batching engine, so the error measures the cost model and
the batching model, not ESP (which has no engine to compare with yet).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time


def _requests(args):
    from vllm_esp.workloads import generate, load_jsonl

    if args.trace:
        return load_jsonl(args.trace)
    return generate(args.workload, args.num_requests, args.seed)


def run_replay(args) -> int:
    from vllm_esp.bench_client.replay import replay
    from vllm_esp.metrics import LOONGSERVE_SLOS, attainment, summarize, summary_table
    from vllm_esp.workloads import poisson

    reqs = _requests(args)
    slo = LOONGSERVE_SLOS.get(args.workload, LOONGSERVE_SLOS["mixed"])
    rows, curve = [], {}
    for rate in ([None] if args.trace else [float(x) for x in args.rates.split(",")]):
        arrivals = reqs if rate is None else poisson(reqs, rate, args.seed)
        res = replay(arrivals, args.base_url, args.model, args.timeout)
        s = summarize(res)
        curve[rate or 0.0] = s
        rows.append((args.label, rate or float("nan"), s))
        print(f"rate {rate}: SLO attainment {attainment(res, slo):.2f}")
    print(summary_table(rows))
    if args.plot:
        from vllm_esp.metrics.plots import plot_latency_vs_rate

        print("wrote", plot_latency_vs_rate({args.label: curve}, args.plot, args.workload, slo))
    return 0


def _wait_ready(url: str, proc, timeout: float = 600.0) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url.replace("/v1", "/health"), timeout=2)
            return
        except OSError:
            time.sleep(2)
    raise TimeoutError("vllm serve did not become ready")


def run_crosscheck(args) -> int:
    """Stock vLLM (1 instance, tiny model, CPU) vs the simulator on the same small trace."""
    from pathlib import Path

    from vllm_esp.bench_client.replay import replay
    from vllm_esp.metrics import summarize, summary_table
    from vllm_esp.planner import CostModel
    from vllm_esp.planner.cost_model import load_builtin
    from vllm_esp.simulator.core import run
    from vllm_esp.simulator.systems import ClusterSpec, build
    from vllm_esp.testing.tiny_model import make_tiny_model
    from vllm_esp.workloads import Request, poisson

    cost = CostModel.load(args.profile) if Path(args.profile).exists() else load_builtin(
        args.profile)
    # small prompts/outputs so the CPU finishes in a minute or two
    import random

    rng = random.Random(args.seed)
    base = [Request(i, rng.randint(16, 512), rng.randint(4, 48)) for i in range(args.num_requests)]
    trace = poisson(base, args.crosscheck_rate, args.seed)
    model = make_tiny_model()
    budget = 2048
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, "--port",
           str(args.port), "--max-num-batched-tokens", str(budget), "--max-model-len", "4096",
           "--served-model-name", "tiny", "--dtype", "float32"]
    print("starting:", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}/v1"
    probe = Request(0, 32, 33)  # alone on an idle server: front-end cost, not queueing
    try:
        _wait_ready(url, proc)
        replay([Request(0, 32, 4)], url, "tiny", args.timeout)  # warm-up
        probes = [replay([probe], url, "tiny", args.timeout)[0] for _ in range(5)]
        real = replay(trace, url, "tiny", args.timeout)
    finally:
        proc.terminate()
        proc.wait(60)
    kv_tokens = 1 * 2**30 // max(1, cost.kv_bytes_per_token)
    spec = ClusterSpec(num_instances=1, kv_tokens_per_instance=kv_tokens, token_budget=budget)

    def simulate(reqs):
        engines, route = build("chunked", cost, spec)
        return run(reqs, engines, route)

    sim = simulate(trace)
    # The profile times engine steps (offline LLM); `vllm serve` adds HTTP, tokenisation and
    # per-token streaming. Measure that once on the idle server with a probe request that is
    # not part of the trace, and add it to every simulated request.
    sim_probe = simulate([probe])[0]
    first_over = _median([p.first_token - p.arrival for p in probes]) - (
        sim_probe.first_token - sim_probe.arrival)
    tok_over = _median([_tpot(p) for p in probes]) - _tpot(sim_probe)
    first_over, tok_over = max(0.0, first_over), max(0.0, tok_over)
    served = [dataclasses.replace(
        r, first_token=r.first_token + first_over,
        finish=r.finish + first_over + tok_over * max(0, r.output_len - 1)) for r in sim]
    rs, ss, sv = summarize(real), summarize(sim), summarize(served)
    print(summary_table([("real vLLM", args.crosscheck_rate, rs),
                         ("simulated (engine)", args.crosscheck_rate, ss),
                         ("simulated + front end", args.crosscheck_rate, sv)]))
    print(f"front-end overhead from the probe: first token +{first_over * 1e3:.1f} ms, "
          f"per further token +{tok_over * 1e3:.2f} ms")
    for label, s in (("engine only", ss), ("with front end", sv)):
        err = (s.mean_latency - rs.mean_latency) / rs.mean_latency
        print(f"mean latency ({label}): real {rs.mean_latency:.4f} s, simulated "
              f"{s.mean_latency:.4f} s, error {err:+.1%}")
    return 0


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _tpot(r) -> float:
    return (r.finish - r.first_token) / max(1, r.output_len - 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://localhost:8000/v1")
    p.add_argument("--model", default="tiny")
    p.add_argument("--label", default="real")
    p.add_argument("--workload", default="sharegpt")
    p.add_argument("--trace")
    p.add_argument("-n", "--num-requests", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", default="1.0")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--plot")
    p.add_argument("--crosscheck", action="store_true")
    p.add_argument("--profile", help="cost-model profile for --crosscheck")
    p.add_argument("--crosscheck-rate", type=float, default=2.0)
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    if args.crosscheck:
        if not args.profile:
            p.error("--crosscheck needs --profile (the tiny model's measured CPU profile)")
        return run_crosscheck(args)
    return run_replay(args)


if __name__ == "__main__":
    sys.exit(main())
