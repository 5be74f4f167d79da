"""CPU seconds of one simulated run (the simulator's own cost, not a serving metric).

    python benchmarks/sim_cost.py --dataset mixed --system esp_async -n 10000 --rates 0.5,1,8.3
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="estimated_a100-80g_lwm-7b-1m_tp2")
    p.add_argument("--dataset", default="mixed")
    p.add_argument("--system", default="esp_async")
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("--rates", default="1.0")
    args = p.parse_args(argv)

    from vllm_esp.planner.cost_model import load_builtin
    from vllm_esp.simulator.compare import run_spec
    from vllm_esp.simulator.runner import simulate
    from vllm_esp.simulator.systems import ClusterSpec, kv_tokens_from_memory
    from vllm_esp.workloads import generate

    cost = load_builtin(args.profile)
    spec = ClusterSpec(num_instances=4, kv_tokens_per_instance=kv_tokens_from_memory(cost))
    reqs = generate(args.dataset, args.n, 0)
    for rate in (float(r) for r in args.rates.split(",")):
        t = time.process_time()
        res = simulate(run_spec(args.system, cost, spec, args.dataset), reqs, rate)
        print(f"{args.system} {args.dataset} n={args.n} rate={rate:g}: "
              f"{time.process_time() - t:.1f} s CPU, {sum(r.finished for r in res)} finished",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
