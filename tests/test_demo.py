"""The README's first command: `vllm-esp demo` serves the embedded tiny model with
`vllm serve --executor esp`, queries it (one request spread over both instances) and stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end_and_spreads_a_request():
    cli = Path(sys.executable).with_name("vllm-esp")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "vllm_esp.cli"]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    out = subprocess.run(cmd + ["demo"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "no process left behind" in out.stdout and "force-killed" not in out.stderr
    # start-up progress instead of a silent minute
    for milestone in ("engine process started", "instance 0: model loaded",
                      "instance 1: model loaded", "ESP executor ready: 2 instances",
                      "ESP KV pool: 2 instances", "API server listening"):
        assert milestone in out.stdout, milestone
    assert "spread over 2 instances:" in out.stdout
    assert 'vllm_esp:num_parallel_prefills_total{engine="0",model_name="tiny"} 1.0' in out.stdout
    assert 'vllm_esp:num_ring_prefills_total{engine="0",model_name="tiny"} 1.0' in out.stdout


def test_demo_reports_workers_vllm_had_to_kill(tmp_path):
    from vllm_esp.demo import shutdown_signals

    log = tmp_path / "serve.log"
    log.write_text(
        "(EngineCore pid=1) INFO 12-06 04:48:15 [multiproc_executor.py:480] [shutdown] "
        "Executor: waiting for worker exit count=1\n"
        "(EngineCore pid=1) WARNING 12-06 04:48:20 [multiproc_executor.py:490] [shutdown] "
        "Executor: workers still running after grace period; sending SIGTERM count=1\n")
    assert shutdown_signals(log) == (
        ["[shutdown] Executor: workers still running after grace period; sending SIGTERM "
         "count=1"], [])
    log.write_text(
        "(APIServer pid=2) WARNING 12-06 05:07:20 [system_utils.py:225] [shutdown] force "
        "killing sub process VLLM::Worker_ESP1 pid 14748\n")
    assert shutdown_signals(log) == (
        [], ["[shutdown] force killing sub process VLLM::Worker_ESP1 pid 14748"])
    log.write_text("(EngineCore pid=1) INFO [shutdown] Executor: all workers exited gracefully\n")
    assert shutdown_signals(log) == ([], [])
