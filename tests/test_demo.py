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
    assert "server stopped cleanly" in out.stdout
    assert "spread over 2 instances:" in out.stdout
    assert 'vllm_esp:num_parallel_prefills_total{engine="0",model_name="tiny"} 1.0' in out.stdout
    assert 'vllm_esp:num_ring_prefills_total{engine="0",model_name="tiny"} 1.0' in out.stdout
