"""examples/offline_esp.py as the README says to run it (the venv's python, from the
repository root): vllm_esp.LLM and stock vllm.LLM with the plugin give the same tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_offline_example_runs():
    out = subprocess.run([sys.executable, "examples/offline_esp.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "vllm_esp.LLM :" in out.stdout and "vllm.LLM(esp):" in out.stdout
