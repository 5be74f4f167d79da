"""Serving cost of the length predictors: TTFT and TPOT of ``vllm serve --esp-policy alise``
with each ``--esp-predictor``, measured by vLLM's own client (``vllm bench serve``).

Issue 21: with ``--esp-predictor retrieval`` serving was 50-100x slower than with ``online``.
This starts one server per predictor (all kept up for the whole run, so they see the same
machine), then runs the same random prompts against each in mirrored rounds (A B, B A, ...):
round r uses ``--seed r`` for every server (no server has seen the prompts before: no prefix
or embedding cache hits), after one warm-up run per server with another seed. It reports the
median over rounds and the ratio of each predictor to the first one (``online``).

    python benchmarks/bench_predictor_serving.py        # tiny model, random 200/32, 100 prompts
    python benchmarks/bench_predictor_serving.py --model MODEL --rounds 4

About 5 minutes on 2 cores (mostly server start-up). Writes
benchmarks/results/predictor_serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_esp.testing.server import VLLMServer, _session_pids, vllm_command  # noqa: E402

METRICS = ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
           "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "duration", "engine_cpu_s")


def bench(server: VLLMServer, model: str, args, seed: int, out_dir: Path) -> dict:
    """One ``vllm bench serve`` run; its saved JSON result."""
    name = f"run-{server.port}-{seed}.json"
    cmd = [*vllm_command(), "bench", "serve", "--base-url", server.url, "--model", model,
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
           "--request-rate", str(args.request_rate), "--seed", str(seed),
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads((out_dir / name).read_text())


def cpu_seconds(server: VLLMServer) -> tuple[float, float | None]:
    """(CPU seconds used so far by the server's processes except the prediction process,
    those of the prediction process or None). CPU time is far less sensitive than latency to
    other jobs on the machine, so it shows whether the engine does more work per request."""
    engine, predictor = 0.0, None
    for pid in _session_pids(server.proc.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        sec = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        if b"vllm_esp.predictor.worker" in cmd:
            predictor = sec
        else:
            engine += sec
    return engine, predictor


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the tiny test model (written here)")
    ap.add_argument("--predictors", default="online,retrieval")
    ap.add_argument("--policy", default="alise")
    ap.add_argument("--rounds", type=int, default=4, help="mirrored rounds (median reported)")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--input-len", type=int, default=200)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--request-rate", default="inf")
    ap.add_argument("--serve-args", default="--dtype float32 --max-model-len 1024 --enforce-eager",
                    help="extra arguments of every vllm serve")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from vllm_esp.testing.tiny_model import make_tiny_model

        model = str(make_tiny_model(out / "tiny_model"))
    predictors = args.predictors.split(",")
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    servers = {}
    try:
        for p in predictors:
            print(f"starting vllm serve --esp-policy {args.policy} --esp-predictor {p}", flush=True)
            servers[p] = VLLMServer(model, [*args.serve_args.split(), "--esp-policy", args.policy,
                                            "--esp-predictor", p],
                                    log_path=out / f"predictor_serving_{p}.log", env=env).start()
        runs = {p: [] for p in predictors}
        with tempfile.TemporaryDirectory() as tmp:
            for p in predictors:
                bench(servers[p], model, args, 10_000, Path(tmp))  # warm-up
            for r in range(args.rounds):
                for p in (predictors if r % 2 == 0 else predictors[::-1]):
                    cpu0 = cpu_seconds(servers[p])[0]
                    res = bench(servers[p], model, args, r, Path(tmp))
                    res["engine_cpu_s"] = cpu_seconds(servers[p])[0] - cpu0
                    runs[p].append({m: res.get(m) for m in METRICS})
                    print(f"[{r}] {p:10s} TTFT mean {res['mean_ttft_ms']:.1f} ms "
                          f"p99 {res['p99_ttft_ms']:.1f} | TPOT mean {res['mean_tpot_ms']:.2f} ms "
                          f"p99 {res['p99_tpot_ms']:.2f} | ITL p99 {res['p99_itl_ms']:.1f} ms | "
                          f"{res['duration']:.2f} s | engine CPU {res['engine_cpu_s']:.2f} s",
                          flush=True)
        cpu = {p: cpu_seconds(servers[p])[1] for p in predictors}
        for p, sec in cpu.items():
            if sec is not None:
                print(f"{p}: its prediction process used {sec:.1f} s of CPU over the whole run "
                      f"({args.rounds + 1} x {args.num_prompts} prompts)")
    finally:
        for s in servers.values():
            left = s.stop()
            if left:
                print(f"server on port {s.port} left processes {left} (killed)")
    med = {p: {m: statistics.median(x[m] for x in rs) for m in METRICS} for p, rs in runs.items()}
    base = predictors[0]
    print(f"\nmedian of {args.rounds} rounds, random {args.input_len}/{args.output_len}, "
          f"{args.num_prompts} prompts, rate {args.request_rate}")
    print("| predictor | mean TTFT ms | p99 TTFT | mean TPOT ms | p99 TPOT | p99 ITL | "
          f"engine CPU s | TTFT / {base} | TPOT / {base} | engine CPU / {base} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, m in med.items():
        print(f"| {p} | {m['mean_ttft_ms']:.1f} | {m['p99_ttft_ms']:.1f} | {m['mean_tpot_ms']:.2f} "
              f"| {m['p99_tpot_ms']:.2f} | {m['p99_itl_ms']:.1f} | {m['engine_cpu_s']:.2f} "
              f"| {m['mean_ttft_ms'] / med[base]['mean_ttft_ms']:.2f} "
              f"| {m['mean_tpot_ms'] / med[base]['mean_tpot_ms']:.2f} "
              f"| {m['engine_cpu_s'] / med[base]['engine_cpu_s']:.2f} |")
    per_round = {p: [(a["mean_ttft_ms"] / b["mean_ttft_ms"], a["mean_tpot_ms"] / b["mean_tpot_ms"])
                     for a, b in zip(rs, runs[base])] for p, rs in runs.items() if p != base}
    for p, ratios in per_round.items():
        print(f"{p} / {base} per round (TTFT, TPOT): " +
              ", ".join(f"({a:.2f}, {b:.2f})" for a, b in ratios))
    (out / "predictor_serving.json").write_text(json.dumps(
        {"args": vars(args), "runs": runs, "median": med}, indent=1))


if __name__ == "__main__":
    main()
