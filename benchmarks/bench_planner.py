"""Planner time per iteration vs vLLM's stock ``Scheduler.schedule()``, same run, same load.

For each (requests N, instances I): a closed loop keeps N requests queued+running (a finished
request is replaced at once). Prompts are log-uniform in [32, 7936] tokens, outputs uniform in
[16, 256]; the KV pool (I instances) holds about 60% of the load's worst case, so admission,
scale-up/merge and DP batching all run. ESP: ``GlobalManager.plan`` timed, plan applied to the
``ClusterState``. Stock: a real ``vllm.v1.core.sched.scheduler.Scheduler`` built from a synthetic
``KVCacheConfig`` (as vLLM's own tests do) with I× the blocks in one pool, ``schedule()`` timed,
fed one sampled token per request through ``update_from_output``. Times exclude model execution.
"running" is the mean number of running (KV-holding) requests while timed: ESP's worst-case
admission runs fewer at once than stock vLLM, which admits on current usage and preempts later.

    python benchmarks/bench_planner.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time

from vllm_esp.planner import ClusterState, Instance, Request, load_builtin
from vllm_esp.planner.manager import GlobalManager

BLOCK = 16


def workload(seed: int):
    rng = random.Random(seed)
    while True:
        prompt = int(math.exp(rng.uniform(math.log(32), math.log(7936))))
        yield prompt, rng.randint(16, 256)


def pool_blocks(n: int, instances: int) -> int:
    mean_tokens = (7936 - 32) / math.log(7936 / 32) + 136  # log-uniform mean + mean output
    return max(64, int(0.6 * n * mean_tokens / BLOCK / instances))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_esp(n: int, instances: int, iters: int, warmup: int) -> tuple[list[float], float]:
    cost = load_builtin("estimated_a100-80g_lwm-7b-1m_tp2")
    state = ClusterState([Instance(i, pool_blocks(n, instances)) for i in range(instances)], BLOCK)
    mgr = GlobalManager(cost)
    gen = workload(n * 131 + instances)
    count = 0

    def refill():
        nonlocal count
        while len(state.waiting) + len(state.running) < n:
            p, o = next(gen)
            state.add_request(Request(f"r{count}", p, o, arrival_time=now))
            count += 1

    now, times, running = 0.0, [], []
    for it in range(warmup + iters):
        refill()
        t0 = time.perf_counter()
        plan = mgr.plan(state, now)
        dt = time.perf_counter() - t0
        if it >= warmup:
            times.append(dt)
            running.append(len(state.running))
        state.apply_plan(plan)
        now += plan.predicted_time
        for rid in [rid for rid, r in state.running.items() if r.output_len >= r.max_output_len]:
            state.finish(rid)
    return times, statistics.mean(running)


def make_stock_scheduler(n: int, num_blocks: int):
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from vllm_esp.testing.tiny_model import make_tiny_model

    sched = SchedulerConfig(max_num_seqs=n, max_num_batched_tokens=16384, max_model_len=8192,
                            enable_chunked_prefill=True, is_encoder_decoder=False)
    model = ModelConfig(model=make_tiny_model(), max_model_len=8192, dtype="float32", seed=0)
    cache = CacheConfig(block_size=BLOCK, enable_prefix_caching=False)
    cache.num_gpu_blocks = num_blocks
    vc = VllmConfig(scheduler_config=sched, model_config=model, cache_config=cache)
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    return Scheduler(vllm_config=vc, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(vc),
                     block_size=BLOCK, log_stats=False)


def bench_stock(n: int, instances: int, iters: int, warmup: int) -> tuple[list[float], float]:
    from vllm import SamplingParams
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request as VRequest

    s = make_stock_scheduler(n, pool_blocks(n, instances) * instances)
    gen = workload(n * 131 + instances)
    count = 0
    times, running = [], []
    for it in range(warmup + iters):
        while len(s.requests) < n:
            p, o = next(gen)
            s.add_request(VRequest(f"r{count}", [1] * p, SamplingParams(max_tokens=o, ignore_eos=True),
                                   None, arrival_time=time.time()))
            count += 1
        t0 = time.perf_counter()
        out = s.schedule()
        dt = time.perf_counter() - t0
        if it >= warmup:
            times.append(dt)
            running.append(len(s.running))
        ids = list(out.num_scheduled_tokens)
        sampled = [[7] if s.requests[r].num_computed_tokens >= s.requests[r].num_prompt_tokens else [] for r in ids]
        mro = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                sampled_token_ids=sampled)
        s.update_from_output(out, mro)
    return times, statistics.mean(running)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--requests", default="64,512,2048")
    ap.add_argument("--instances", default="4,8,32,64")
    args = ap.parse_args(argv)
    iters, warmup = (30, 10) if args.quick else (150, 30)
    print("| requests | instances | ESP plan p50 (ms) | ESP p99 (ms) | ESP running | "
          "stock schedule p50 (ms) | stock p99 (ms) | stock running |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in map(int, args.requests.split(",")):
        for k in map(int, args.instances.split(",")):
            it = iters if n < 2048 else max(20, iters // 3)
            esp, esp_run = bench_esp(n, k, it, warmup)
            stock, stock_run = bench_stock(n, k, it, warmup)
            print(f"| {n} | {k} | {1e3 * statistics.median(esp):.2f} | {1e3 * pct(esp, 0.99):.2f} | "
                  f"{esp_run:.0f} | {1e3 * statistics.median(stock):.2f} | {1e3 * pct(stock, 0.99):.2f} | "
                  f"{stock_run:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
