"""ESP in the engine (1, 2, 4 instances) vs stock vLLM, same per-instance KV memory, one run.

    python benchmarks/bench_esp_engine.py [--pool-mib 4] [--rounds 3] [--short-requests 64]
                                          [--long-requests 8] [--configs stock,esp-1,esp-2,esp-4]

Tiny random float32 Llama (1 KiB of KV per token, blocks of 128 tokens). Every configuration
gets the same KV pool per instance (``--pool-mib``; 4 MiB = 32 blocks, 31 usable after vLLM's
null block, C = 3968 tokens). Stock vLLM and esp-1 hold one pool, so their max_model_len is C;
esp-N pools N instances' KV, so its max_model_len is N·C.

Per configuration and round, one engine serves, after a two-request warm-up:
  (a) the short trace: ``--short-requests`` prompts of 32-512 tokens, 32-64 output tokens;
  (b) the long trace: ``--long-requests`` prompts of 2000-3500 tokens (within one pool),
      16 output tokens;
  (c) first round only, the longest prompt it can hold: C·N - ``--longest-margin`` - 4 tokens,
      4 output tokens (really served), and one token more than max_model_len (refused).
Prompts are seeded random token ids, identical for every configuration; all requests of a trace
are submitted at once (offline ``LLM.generate``), greedy, ignore_eos. Configurations are
interleaved, their order reversed every other round; the table shows medians over rounds.

Output tokens/s = output tokens / wall time of the trace's ``generate`` call. TTFT is vLLM's own
per-request ``RequestOutput.metrics.first_token_latency`` (engines built with
``disable_log_stats=False``): seconds from the request's arrival at the front end to its first
token, so it includes queueing behind the other requests of the trace.

Process layout: ESP's engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so
that its scheduler's counters (spanning requests, scale-ups) can be read; its instances' workers
run in their own processes as always (``--esp-multiprocessing``: vLLM's default layout, without
those counters). Stock vLLM keeps vLLM's default layout, engine core and its one worker in their
own process: in-process, stock's uni executor runs the model in the front-end process, which
measured 5-20x slower here and would not be stock as people run it. Span-attention bytes are read
from the ESP workers (``esp_comm_bytes``) in both layouts. At the end, stock vLLM is started once
with max_model_len two blocks above C (one above its raw pool) to record that it refuses to start.

This is a CPU run: the figures show the plugin's overheads and the effect of pooled memory,
not GPU speed-ups. On a 2-core machine, 2 and 4 instances share the same 2 cores.
Writes benchmarks/results/esp_engine.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

CONFIGS = {"stock": None, "esp-1": 1, "esp-2": 2, "esp-4": 4, "esp-2-ray": 2, "esp-2-plan": 2}
DEFAULT_CONFIGS = "stock,esp-1,esp-2,esp-4"
# instance backend of a config (default: worker processes, "mp"); "ray" starts a local Ray
# unless RAY_ADDRESS names a cluster
BACKENDS = {"esp-2-ray": "ray"}
# the global manager plans each step's new requests with this cost profile (the built-in one
# measured on a 2-core CPU has k = 1 only: it decides dispatch, never a ring)
PROFILES = {"esp-2-plan": "measured_cpu_tiny-llama"}
MiB = 1 << 20
BLOCK = 128  # tokens per KV block (vLLM's CPU default)
KV_BYTES_PER_TOKEN = 1024  # tiny Llama float32: 2 layers x (K, V) x 2 KV heads x 32 dims x 4 B
VOCAB = 512
CPU_NOTE = ("CPU figures show the plugin's overheads and the effect of pooled KV memory, "
            "not GPU speed-ups (2 and 4 instances share the same CPU cores).")


def capacity_tokens(pool_bytes: int) -> int:
    """Usable tokens of one instance's pool: whole blocks minus vLLM's null block."""
    return (pool_bytes // (BLOCK * KV_BYTES_PER_TOKEN) - 1) * BLOCK


def _prompt(rng: random.Random, n: int):
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=[rng.randrange(8, VOCAB) for _ in range(n)])


def make_traces(args) -> dict:
    """Seeded (prompts, params) per trace; the same for every configuration."""
    from vllm import SamplingParams

    def greedy(n):
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

    rng = random.Random(args.seed)
    short = [(_prompt(rng, rng.randint(32, 512)), greedy(rng.randint(32, 64)))
             for _ in range(args.short_requests)]
    long = [(_prompt(rng, rng.randint(args.long_min, args.long_max)), greedy(args.long_output))
            for _ in range(args.long_requests)]
    return {"short": short, "long": long}


def _scheduler(llm):
    core = getattr(llm.llm_engine.engine_core, "engine_core", None)
    return getattr(core, "scheduler", None)


def _esp_counters(llm) -> dict:
    sched = _scheduler(llm)
    if sched is None or not hasattr(sched, "esp_stats"):
        return {}
    s = sched.esp_stats()
    return {"spanning": s["spanning_requests"], "scale_up": s["scale_up"],
            "instance_preemptions": sum(s["preemptions"]),
            "dispatched": list(s["dispatched"])}


def _span_bytes(llm) -> int:
    """Bytes the ESP workers sent for span attention so far (0 for stock / no spans)."""
    try:
        return sum(sum(d.values()) for d in llm.collective_rpc("esp_comm_bytes"))
    except Exception:  # noqa: BLE001 - stock workers have no such method
        return 0


def _pool_blocks(llm, instances) -> list[int]:
    """Usable blocks per instance as the engine really allocated them."""
    sched = _scheduler(llm)
    if sched is None:  # engine core in its own process: the front end's copy of the config
        blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
        return [blocks - 1] if blocks and instances is None else []
    if instances is None:
        return [sched.kv_cache_manager.block_pool.num_gpu_blocks - 1]
    return [sched.pool.total_blocks(i) for i in range(instances)]


def run_trace(llm, trace) -> dict:
    prompts, params = zip(*trace)
    before, bytes0 = _esp_counters(llm), _span_bytes(llm)
    t0 = time.perf_counter()
    outs = llm.generate(list(prompts), list(params), use_tqdm=False)
    wall = time.perf_counter() - t0
    after = _esp_counters(llm)
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    want = sum(p.max_tokens for p in params)
    ttft = [o.metrics.first_token_latency for o in outs if o.metrics is not None]
    row = {"wall_s": wall, "output_tokens": out_tokens, "expected_tokens": want,
           "output_tok_s": out_tokens / wall,
           "total_tok_s": (out_tokens + sum(len(p["prompt_token_ids"]) for p in prompts)) / wall,
           "ttft": ttft,
           "preemptions": sum(o.metrics.num_preemptions for o in outs if o.metrics is not None),
           "span_bytes": _span_bytes(llm) - bytes0}
    for k in ("spanning", "scale_up", "instance_preemptions"):
        if k in after:
            row[k] = after[k] - before[k]
    return row


def run_longest(llm, capacity: int, args) -> dict:
    """Serve the longest prompt the configuration holds, then ask for one token too many."""
    from vllm import SamplingParams

    n = capacity - args.longest_margin - 4
    rng = random.Random(args.seed + 1)
    before, bytes0 = _esp_counters(llm), _span_bytes(llm)
    t0 = time.perf_counter()
    out = llm.generate([_prompt(rng, n)],
                       SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                       use_tqdm=False)[0]
    row = {"prompt_tokens": n, "served_tokens": len(out.outputs[0].token_ids),
           "latency_s": time.perf_counter() - t0, "span_bytes": _span_bytes(llm) - bytes0}
    after = _esp_counters(llm)
    if after:
        row["spanning"] = after["spanning"] - before["spanning"]
    try:
        llm.generate([_prompt(rng, capacity + 1)], SamplingParams(max_tokens=1), use_tqdm=False)
        row["above_max"] = "served (unexpected)"
    except Exception as e:  # noqa: BLE001 - vLLM's validation error, whatever its class
        row["above_max"] = f"refused: {type(e).__name__}"
    return row


def run_config(model: str, name: str, args, traces: dict, longest: bool) -> dict:
    from vllm import SamplingParams

    from vllm_esp.testing.engines import close_engine, engine_core_in_process, make_engine

    instances = CONFIGS[name]
    pool = int(args.pool_mib * MiB)
    capacity = capacity_tokens(pool) * (instances or 1)
    options = {"esp_instance_backend": BACKENDS[name]} if name in BACKENDS else {}
    if name in PROFILES:
        options["esp_profile"] = PROFILES[name]
    t0 = time.perf_counter()
    with engine_core_in_process(instances is not None and not args.esp_multiprocessing):
        llm = make_engine(model, instances, kv_cache_memory_bytes=pool, max_model_len=capacity,
                          disable_log_stats=False, **options)
    res: dict = {"start_s": time.perf_counter() - t0, "max_model_len": capacity}
    try:
        res["pool_blocks"] = _pool_blocks(llm, instances)
        warm = [p for p, _ in traces["short"][:2]]
        llm.generate(warm, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                     use_tqdm=False)
        for name, trace in traces.items():
            res[name] = run_trace(llm, trace)
        if longest:
            res["longest"] = run_longest(llm, capacity, args)
    finally:
        close_engine(llm)
    return res


def stock_above_one_pool(model: str, args) -> str:
    """Start stock vLLM with max_model_len one block above its pool: it should refuse."""
    from vllm_esp.testing.engines import close_engine, engine_core_in_process, make_engine

    pool = int(args.pool_mib * MiB)
    try:  # in-process so the error is vLLM's own, not "engine core initialization failed"
        with engine_core_in_process(True):
            llm = make_engine(model, None, kv_cache_memory_bytes=pool,
                              max_model_len=capacity_tokens(pool) + 2 * BLOCK)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).splitlines() or [""])[0].split(", (")[0]  # the rest is GiB rounded to 0.0
        return f"refuses to start ({type(e).__name__}: {msg[:160]} ...)"
    close_engine(llm)
    return "started (unexpected)"


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summarize(rows: dict[str, list[dict]]) -> dict:
    med = statistics.median
    summary = {}
    for name, runs in rows.items():
        s = {"start_s": med(r["start_s"] for r in runs), "max_model_len": runs[0]["max_model_len"],
             "pool_blocks": runs[0]["pool_blocks"]}
        for trace in ("short", "long"):
            rs = [r[trace] for r in runs]
            s[trace] = {
                "output_tok_s": med(r["output_tok_s"] for r in rs),
                "total_tok_s": med(r["total_tok_s"] for r in rs),
                "wall_s": med(r["wall_s"] for r in rs),
                "ttft_mean": med(statistics.fmean(r["ttft"]) for r in rs if r["ttft"]),
                "ttft_p50": med(_pct(r["ttft"], 0.5) for r in rs if r["ttft"]),
                "ttft_p90": med(_pct(r["ttft"], 0.9) for r in rs if r["ttft"]),
                "preemptions": max(r["preemptions"] for r in rs),
                "spanning": max((r["spanning"] for r in rs if "spanning" in r), default=None),
                "scale_up": max((r["scale_up"] for r in rs if "scale_up" in r), default=None),
                "span_mb": med(r["span_bytes"] for r in rs) / MiB,
                "all_tokens": all(r["output_tokens"] == r["expected_tokens"] for r in rs),
            }
        s["longest"] = next((r["longest"] for r in runs if "longest" in r), None)
        summary[name] = s
    return summary


def table(summary: dict, args, stock_refusal: str | None) -> str:
    base = summary.get("stock")
    lines = [f"ESP engine vs stock vLLM, tiny float32 Llama, {args.pool_mib:g} MiB KV per instance "
             f"(C = {capacity_tokens(int(args.pool_mib * MiB))} tokens), median of "
             f"{args.rounds} interleaved round(s).", "",
             f"> {CPU_NOTE}", "",
             "TTFT: vLLM's per-request first_token_latency (arrival to first token, queueing "
             "included; all requests of a trace arrive at once). preemptions: sum of the "
             "requests' num_preemptions (max over rounds). spanning (scale-up): requests whose "
             "KV was on several instances (of which decodes continued on another instance); "
             "'-' where the scheduler is not in this process. span MiB: bytes the ESP workers "
             "sent for span attention.", ""]
    for trace, what in (("short", f"{args.short_requests} requests, prompts 32-512 tokens, "
                                  f"32-64 output tokens"),
                        ("long", f"{args.long_requests} requests, prompts {args.long_min}-"
                                 f"{args.long_max} tokens, {args.long_output} output tokens")):
        lines += [f"### ({'a' if trace == 'short' else 'b'}) {trace} trace: {what}", "",
                  "| config | out tok/s | vs stock | total tok/s | TTFT mean s | TTFT p50 s "
                  "| TTFT p90 s | wall s | preemptions | spanning (scale-up) reqs | span MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in summary.items():
            t = s[trace]
            ratio = f"{t['output_tok_s'] / base[trace]['output_tok_s']:.2f}" if base else "-"
            flag = "" if t["all_tokens"] else " (short of tokens!)"
            spans = "-" if t["spanning"] is None else f"{t['spanning']} ({t['scale_up']})"
            lines.append(f"| {name} | {t['output_tok_s']:.1f}{flag} | {ratio} | "
                         f"{t['total_tok_s']:.0f} | {t['ttft_mean']:.2f} | {t['ttft_p50']:.2f} | "
                         f"{t['ttft_p90']:.2f} | {t['wall_s']:.1f} | {t['preemptions']} | "
                         f"{spans} | "
                         f"{t['span_mb']:.1f} |")
        lines.append("")
    lines += ["### (c) longest prompt served with the same per-instance memory", "",
              "| config | usable blocks per instance | max_model_len | prompt served (+4 out) "
              "| latency s | spanning | span MiB | max_model_len + 1 | engine start s |",
              "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for name, s in summary.items():
        lg = s["longest"] or {}
        served = (f"{lg['prompt_tokens']} ({lg['served_tokens']} out)" if lg else "-")
        lines.append(f"| {name} | {s['pool_blocks']} | {s['max_model_len']} | {served} | "
                     f"{lg.get('latency_s', float('nan')):.1f} | {lg.get('spanning', '-')} | "
                     f"{lg.get('span_bytes', 0) / MiB:.1f} | "
                     f"{lg.get('above_max', '-')} | {s['start_s']:.1f} |")
    if stock_refusal:
        lines += ["", f"Stock vLLM with max_model_len above one pool "
                      f"(C + {2 * BLOCK} tokens): {stock_refusal}. Stock max = one pool."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = range(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, label in ((axes[0], "output_tok_s", "output tokens/s"),
                           (axes[1], "ttft_mean", "mean TTFT (s)")):
        for k, (trace, off) in enumerate((("short", -0.2), ("long", 0.2))):
            ax.bar([i + off for i in x], [summary[n][trace][key] for n in names], width=0.4,
                   label=f"{trace} trace", color=f"C{k}")
        ax.set_xticks(list(x), names)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[2].bar(list(x), [(summary[n]["longest"] or {}).get("prompt_tokens", 0) for n in names],
                color="C2")
    axes[2].set_xticks(list(x), names)
    axes[2].set_ylabel("longest prompt served (tokens)")
    fig.suptitle("ESP vs stock vLLM, same KV per instance (CPU: overheads, not GPU speed-ups)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=CPU_NOTE)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--pool-mib", type=float, default=4.0, help="KV pool per instance (MiB)")
    ap.add_argument("--rounds", type=int, default=3, help="engines per config (median)")
    ap.add_argument("--short-requests", type=int, default=64)
    ap.add_argument("--long-requests", type=int, default=8)
    ap.add_argument("--long-min", type=int, default=2000)
    ap.add_argument("--long-max", type=int, default=3500)
    ap.add_argument("--long-output", type=int, default=16)
    ap.add_argument("--longest-margin", type=int, default=BLOCK,
                    help="tokens kept free below capacity for the longest prompt")
    ap.add_argument("--esp-multiprocessing", action="store_true",
                    help="ESP engine core in its own process too (no spanning/scale-up counts)")
    ap.add_argument("--no-stock-refusal", action="store_true",
                    help="skip starting stock vLLM above one pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    pool = int(args.pool_mib * MiB)
    if args.long_max + args.long_output > capacity_tokens(pool):
        ap.error(f"--long-max + --long-output must fit one pool ({capacity_tokens(pool)} tokens)")

    # pools sized by kv_cache_memory_bytes only
    if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        print("note: VLLM_CPU_KVCACHE_SPACE unset for this run (it overrides --pool-mib)")

    from tqdm import tqdm

    from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model

    most = max(CONFIGS[n] or 1 for n in names) * capacity_tokens(pool)
    positions = 8192
    while positions < most:
        positions *= 2
    model = make_tiny_model(spec=TinyModelSpec(arch="llama", max_position_embeddings=positions))
    traces = make_traces(args)

    t_run = time.perf_counter()
    rows: dict[str, list[dict]] = {n: [] for n in names}
    with tqdm(total=args.rounds * len(names), desc="engines") as bar:
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                bar.set_postfix_str(f"round {r + 1} {name}")
                rows[name].append(run_config(model, name, args, traces, longest=r == 0))
                bar.update()
    refusal = None
    if "stock" in names and not args.no_stock_refusal:
        refusal = stock_above_one_pool(model, args)
    elapsed = time.perf_counter() - t_run

    summary = summarize(rows)
    md = table(summary, args, refusal) + f"\nWhole run: {elapsed / 60:.1f} min.\n"
    print("\n" + md)
    print(CPU_NOTE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "esp_engine.md").write_text(md)
    (out / "esp_engine.json").write_text(json.dumps(
        {"args": vars(args), "rows": rows, "summary": summary, "stock_above_one_pool": refusal,
         "elapsed_s": elapsed}, indent=1))
    plot(summary, out / "esp_engine.png")
    print(f"table: {out / 'esp_engine.md'}\nplot: {out / 'esp_engine.png'}")


if __name__ == "__main__":
    main()
