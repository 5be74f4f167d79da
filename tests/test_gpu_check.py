"""``benchmarks/gpu_check.py --dry-run``: the one-command GPU check walks every step on the
CPU (tiny shapes, CPU backend, tiny engines), so the script a GPU machine runs is not broken
by changes nobody could try on a GPU (about 2-3 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_every_step(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 0 and report["ok"], proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["dry_run"] and report["kernels"] and all(r["ok"] for r in report["kernels"])
    assert report["golden"]["ok"]
    assert [t["config"] for t in report["timing"]] == ["stock", "esp-1", "esp-2"]
    assert (tmp_path / "gpu_check.png").exists()
