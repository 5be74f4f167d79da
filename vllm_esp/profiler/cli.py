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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("profile", help="measure the engine and fit the ESP cost model",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model path or HF id; 'tiny' writes the tiny test model")
    p.add_argument("--out", required=True, help="profile JSON to write")
    p.add_argument("--instances", type=_ints, default=(1,), help="ESP group sizes k, e.g. 1,2,4")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 2, 4, 8))
    p.add_argument("--lengths", type=_ints, default=(32, 128, 512, 1024), help="prompt tokens")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="minimum of this many runs per point")
    p.add_argument("--cache", default=None, help="point cache (default: <out>.points.jsonl)")
    p.add_argument("--device", default=None, help="device label stored in the profile")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm_esp.planner.cost_model import ProfileMeta
    from vllm_esp.profiler.engine import EngineTimer, host_copy_bandwidth, model_kv_bytes_per_token
    from vllm_esp.profiler.measure import Grid, PointCache, fit_profile, run_grid

    model = args.model
    if model == "tiny":
        from vllm_esp.testing.tiny_model import make_tiny_model

        model = make_tiny_model()
    grid = Grid(args.instances, args.batch_sizes, args.lengths, args.decode_steps)
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
    profile = fit_profile(points, grid, meta, kv_bytes, host_copy_bandwidth())
    profile.save(args.out)
    for name, err in sorted(meta.fit_mean_rel_error.items()):
        print(f"{name}: mean relative error {err:.1%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="vllm-esp")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    a = parser.parse_args(["profile", *sys.argv[1:]])
    sys.exit(a.func(a))
