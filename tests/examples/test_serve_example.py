"""examples/serve_esp.sh as the README says to run it: it takes the port and extra flags,
prints the model it serves, and its printed curl command works as printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vllm_esp.testing.server import _session_pids, free_port

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "serve_esp.sh"


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve_esp.sh exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("serve_esp.sh never became healthy")


def test_serve_example_takes_port_and_flags_and_its_curl_works(tmp_path):
    port = free_port()
    # the venv's commands first on PATH, as after `source .venv/bin/activate`
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(["bash", str(SCRIPT), "--port", str(port), "--max-model-len", "2048",
                             "--kv-cache-memory-bytes", str(64 << 20)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                            start_new_session=True)
    try:
        printed = [proc.stdout.readline() for _ in range(4)]
        assert printed[0].startswith("serving /") and f"localhost:{port}" in printed[0]
        model = printed[0].split()[1]
        assert Path(model, "config.json").exists()  # the model path it serves, printed
        curl = printed[2].strip()
        assert curl.startswith(f"curl -s http://localhost:{port}/v1/completions")
        _wait_healthy(port, proc)
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
        answer = json.loads(out.stdout)
        assert answer["model"] == model and answer["choices"][0]["text"], out.stdout
        metrics = subprocess.run(["bash", "-c", printed[3].strip()], capture_output=True,
                                 text=True, timeout=60).stdout
        assert "vllm_esp:num_requests_dispatched_total{" in metrics
        assert 'instance="1"' in metrics  # --esp-instances 2 by default
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _session_pids(proc.pid)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        log.close()
    assert left == [], "serve_esp.sh left processes behind"
