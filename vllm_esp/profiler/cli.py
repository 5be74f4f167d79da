"""``vllm-esp profile``: measure the live engine, fit the cost model, write the profile.

Example (the tiny test model on this CPU)::

    VLLM_CPU_KVCACHE_SPACE=1 vllm-esp profile --model tiny --out tiny_cpu.json

Interrupted runs resume: measured points are appended to ``<out>.points.jsonl`` and skipped
next time. Importing this module is cheap; vllm and torch load inside ``run``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    from vllm_esp.cli import HelpFormatter

    p = subparsers.add_parser("profile", help="measure the engine and fit the ESP cost model",
                              description=__doc__.splitlines()[0],
                              formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="model path or HF id; 'tiny' writes the tiny test model")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--instances", type=_ints, default=None,
                   help="ESP group sizes k to measure, e.g. 1,2,4. The engine's planner spreads "
                   "a prompt over at most the largest k of its profile; default: 1 and the "
                   "powers of two up to the instances this machine holds (CPU cores or GPUs "
                   "/ --tp-size), and that number: 1,2 on 2 cores")
    p.add_argument("--batch-sizes", type=_ints, default="1,2,4,8",
                   help="requests per timed batch (at least 2 sizes)")
    p.add_argument("--lengths", type=_ints, default="32,128,512,1024",
                   help="prompt tokens (at least 2 lengths)")
    p.add_argument("--decode-steps", type=int, default=64, help="tokens per timed decode")
    p.add_argument("--repeats", type=int, default=5, help="minimum of this many runs per point")
    p.add_argument("--cache", default=None, help="point cache (default: <out>.points.jsonl)")
    p.add_argument("--device", default=None, help="device label stored in the profile")
    p.add_argument("--dtype", default="auto", help="model dtype")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel workers per instance")
    p.add_argument("--max-model-len", type=int, default=4096, help="engine max_model_len")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def default_instances(limit: int) -> tuple[int, ...]:
    """Group sizes the planner needs on a machine of ``limit`` instances: 1, the powers of
    two below ``limit``, and ``limit`` (the planner extrapolates k between them from the
    nearest measured k below)."""
    ks, k = [1], 2
    while k < limit:
        ks.append(k)
        k *= 2
    if limit > 1:
        ks.append(limit)
    return tuple(ks)


def machine_instances(tp_size: int) -> int:
    """Instances of ``tp_size`` workers this machine holds: one CPU core or one GPU each."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        units = len(os.sched_getaffinity(0))
    else:
        units = current_platform.device_count()
    return max(1, units // max(1, tp_size))


def run(args: argparse.Namespace) -> int:
    from vllm_esp.profiler.measure import Grid

    try:  # refuse a grid that cannot be fitted before minutes of measuring
        grid = Grid(args.instances or (1,), args.batch_sizes, args.lengths, args.decode_steps)
        grid.check()
    except ValueError as e:
        print(f"vllm-esp profile: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm_esp.planner.cost_model import ProfileMeta
    from vllm_esp.profiler.engine import EngineTimer, host_copy_bandwidth, model_kv_bytes_per_token
    from vllm_esp.profiler.measure import PointCache, fit_profile, run_grid

    if args.instances is None:
        grid = Grid(default_instances(machine_instances(args.tp_size)), args.batch_sizes,
                    args.lengths, args.decode_steps)
        print(f"measuring ESP group sizes k={','.join(map(str, grid.instances))} "
              "(--instances to choose)")
    model = args.model
    if model == "tiny":
        from vllm_esp.testing.tiny_model import make_tiny_model

        model = make_tiny_model()
    cache = PointCache.open(args.cache or args.out + ".points.jsonl")
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = lambda **kw: tqdm(desc="profile", unit="pt", **kw)  # noqa: E731
    max_tokens = max(args.batch_sizes) * (max(args.lengths) + args.decode_steps + 1)

    def timer_for(k: int):
        return EngineTimer(model, k, repeats=args.repeats, max_model_len=args.max_model_len,
                           max_batched_tokens=max(max_tokens, 2048), max_seqs=max(args.batch_sizes),
                           dtype=args.dtype, tensor_parallel_size=args.tp_size)

    points = run_grid(timer_for, grid, cache, progress)
    kv_bytes, dtype = model_kv_bytes_per_token(model) if os.path.isdir(model) else (0, args.dtype)
    device = args.device or f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"
    meta = ProfileMeta(os.path.basename(model.rstrip("/")) if args.model != "tiny" else "tiny-llama",
                       dtype if args.dtype == "auto" else args.dtype, args.tp_size, device, "measured",
                       f"vllm-esp profile: k={list(grid.instances)} batches={list(grid.batch_sizes)} "
                       f"lengths={list(grid.lengths)} decode_steps={grid.decode_steps} "
                       f"repeats={args.repeats}; migration bandwidth = host memcpy")
    try:
        profile = fit_profile(points, grid, meta, kv_bytes, host_copy_bandwidth())
    except ValueError as e:
        print(f"vllm-esp profile: error: {e}; nothing written", file=sys.stderr)
        return 1
    profile.save(args.out)
    for name, err in sorted(meta.fit_mean_rel_error.items()):
        print(f"{name}: mean relative error {err:.1%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="vllm-esp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    a = parser.parse_args(["profile", *sys.argv[1:]])
    sys.exit(a.func(a))
