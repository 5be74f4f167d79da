"""The ESP GPU check: one command on one GPU (about 5-8 minutes on an H100).

    python benchmarks/gpu_check.py [--out DIR] [--dry-run]

Steps (each prints a line; results go to DIR, default benchmarks/results/gpu_check/):

1. environment: torch / vLLM versions, the GPU;
2. models: a random Llama-shaped checkpoint written here (8 layers, hidden 1024, GQA 16/4,
   head_dim 128, weights x3) in bfloat16, and a float32 copy of the same weights;
3. kernels: the span-attention backends on the device against the dense oracle (flash-attn
   varlen reading the paged cache in place, the Triton staircase kernel; float32 and
   bfloat16), the cases of ``tests/ops/test_kernels.py``;
4. golden: stock vLLM vs ``executor="esp"`` with 2 instances sharing the one GPU (memory split;
   the ESP communicator falls back to gloo with host staging and says so) on mixed prompts up
   to 16k tokens, some spread over both instances (ring prefill, decode exchange), greedy with
   logprobs and seeded sampling, float32: tokens must be equal;
5. timing: out tok/s and TTFT p50/p99 of stock, esp-1 and esp-2 on the bfloat16 model, the
   same mixed trace, all requests at once;
6. JSON and a PNG under DIR.

``--dry-run`` (no GPU) walks every step on the CPU: tiny shapes, the CPU backend against the
oracle, the same golden and timing code on tiny CPU engines (fp32), the same files.
The exit status is 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GPU_SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=128,
                 max_position_embeddings=32768)
DRY_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 max_position_embeddings=8192)


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def environment() -> dict:
    import torch
    import vllm

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "vllm": vllm.__version__, "cuda": torch.cuda.is_available()}
    if env["cuda"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def write_models(out: Path, dry: bool) -> dict:
    from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model

    shape = DRY_SHAPE if dry else GPU_SHAPE
    models = {}
    for dtype in ("bfloat16", "float32"):
        spec = TinyModelSpec(arch="llama", seed=5, dtype="float32" if dry else dtype, **shape)
        models[dtype] = make_tiny_model(out / f"model-{dtype}", spec)
    return models


def kernel_checks(dry: bool) -> list[dict]:
    """The backends vs the oracle on the device; each row: backend, case, max error, ok."""
    import torch

    from vllm_esp.testing import kernel_checks as kc

    device = torch.device("cpu" if dry else "cuda")
    backends = ["cpu"] if dry else ["flash_attn", "triton"]
    dtypes = [torch.float32] if dry else [torch.float32, torch.bfloat16]
    rows = []
    for backend in backends:
        for dtype in dtypes:
            rows += kc.run_all(device, backend, dtype)
    return rows


def workload(max_len: int, seed: int = 0, spread: bool = True):
    """Mixed prompts up to ``max_len`` tokens; with ``spread`` the longest ones carry the hint
    to spread over 2 instances (an engine of one instance refuses that hint, as it should)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    lengths = [8, 64, 200, 500, 1000, 2000, max_len // 4, max_len // 2, max_len - 64] + \
        [rng.randint(16, max_len // 8) for _ in range(15)]
    prompts, params = [], []
    for i, n in enumerate(lengths):
        prompts.append(TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)]))
        extra = {"esp_instances": 2} if spread and n >= max_len // 4 else None
        if i % 2:
            params.append(SamplingParams(temperature=0.0, max_tokens=32, logprobs=2,
                                         ignore_eos=True, extra_args=extra))
        else:
            params.append(SamplingParams(temperature=0.8, seed=i, max_tokens=32,
                                         ignore_eos=True, extra_args=extra))
    return prompts, params


def engine_kwargs(config: str, dry: bool, golden: bool) -> dict:
    kw = dict(dtype="float32" if (dry or golden) else "bfloat16", seed=0,
              max_model_len=(2048 if dry else 16384), max_num_seqs=64,
              enable_prefix_caching=False, disable_log_stats=False)
    if dry:
        # one step takes every prompt whole: stock vLLM's CPU sampler cannot rewind the seeded
        # generator of a chunked prefill's discarded sample ("CPU Generator does not use
        # offset"); CUDA generators can
        kw.update(enforce_eager=True, kv_cache_memory_bytes=64 << 20,
                  max_num_batched_tokens=16384)
    else:
        kw.update(gpu_memory_utilization=0.8, enforce_eager=golden)
        if golden:  # float32: the backend ESP extends for float32, for stock as well
            kw.update(attention_backend="TRITON_ATTN")
    if config != "stock":
        kw.update(executor="esp", esp_instances=int(config.split("-")[1]))
    return kw


def run_engine(model: str, config: str, dry: bool, golden: bool, max_len: int) -> dict:
    from vllm_esp.testing.engines import close_engine

    kw = engine_kwargs(config, dry, golden)
    if config == "stock":
        from vllm import LLM
    else:
        from vllm_esp import LLM
    t0 = time.perf_counter()
    llm = LLM(model, **kw)
    start_s = time.perf_counter() - t0
    try:
        prompts, params = workload(max_len, spread=config != "esp-1")
        if not golden:
            llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
    finally:
        close_engine(llm)
    ttft = sorted(o.metrics.first_token_latency for o in outs if o.metrics is not None)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"config": config, "start_s": start_s, "wall_s": wall, "out_tok_s": tokens / wall,
            "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99), "outputs": outs}


def _pct(xs, q):
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def compare(ref, got) -> dict:
    """Tokens equal per request; greedy logprobs within 1e-3 (float32)."""
    bad, worst = [], 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        if list(r.outputs[0].token_ids) != list(g.outputs[0].token_ids):
            bad.append(i)
            continue
        for pos, (rl, gl) in enumerate(zip(r.outputs[0].logprobs or [], g.outputs[0].logprobs or [])):
            tok = r.outputs[0].token_ids[pos]
            worst = max(worst, abs(rl[tok].logprob - gl[tok].logprob))
    return {"requests": len(ref), "token_mismatches": bad, "max_logprob_diff": worst,
            "ok": not bad and worst <= 1e-3}


def plot(out: Path, timing: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [t["config"] for t in timing]
    ax[0].bar(names, [t["out_tok_s"] for t in timing])
    ax[0].set(title="output tokens / s", ylabel="tok/s")
    ax[1].bar([f"{n} p50" for n in names], [t["ttft_p50"] or 0 for t in timing])
    ax[1].bar([f"{n} p99" for n in names], [t["ttft_p99"] or 0 for t in timing])
    ax[1].set(title="TTFT", ylabel="s")
    ax[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out / "gpu_check.png", dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check")
    ap.add_argument("--dry-run", action="store_true", help="walk every step on the CPU")
    args = ap.parse_args()
    dry = args.dry_run
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"dry_run": dry, "ok": True}
    max_len = 2048 if dry else 16384
    try:
        result["environment"] = environment()
        say(f"environment: {result['environment']}")
        if not dry and not result["environment"]["cuda"]:
            raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        models = write_models(args.out, dry)
        say(f"models written: {models}")
        rows = kernel_checks(dry)
        result["kernels"] = rows
        bad = [r for r in rows if not r["ok"]]
        say(f"kernels: {len(rows) - len(bad)}/{len(rows)} cases within tolerance")
        for r in bad:
            say(f"  FAILED {r}")
        result["ok"] &= not bad
        stock = run_engine(models["float32"], "stock", dry, True, max_len)
        esp = run_engine(models["float32"], "esp-2", dry, True, max_len)
        result["golden"] = compare(stock["outputs"], esp["outputs"])
        say(f"golden stock vs esp-2 (float32): {result['golden']}")
        result["ok"] &= result["golden"]["ok"]
        timing = []
        for config in ("stock", "esp-1", "esp-2"):
            t = run_engine(models["bfloat16"], config, dry, False, max_len)
            t.pop("outputs")
            timing.append(t)
            say(f"timing {config}: {t['out_tok_s']:.0f} out tok/s, TTFT p50 "
                f"{t['ttft_p50']:.3f} s p99 {t['ttft_p99']:.3f} s (engine start {t['start_s']:.0f} s)")
        result["timing"] = timing
        base = timing[0]["out_tok_s"]
        print("| config | out tok/s | vs stock | TTFT p50 s | TTFT p99 s |")
        print("|---|---|---|---|---|")
        for t in timing:
            print(f"| {t['config']} | {t['out_tok_s']:.0f} | {t['out_tok_s'] / base:.2f}x | "
                  f"{t['ttft_p50']:.3f} | {t['ttft_p99']:.3f} |")
        plot(args.out, timing)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - reported, then a failing exit status
        result["ok"] = False
        result["error"] = traceback.format_exc()
        say("FAILED with an exception:\n" + result["error"])
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    say(f"{'PASSED' if result['ok'] else 'FAILED'}; results in {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
