"""Start and stop a real ``vllm serve`` process (used by the demo, tests and benchmarks).

The server runs in its own session so that stopping it can be checked: after ``stop()`` no
process of that session (API server, EngineCore, workers) may remain.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """The ``vllm`` console script next to this interpreter (what a user types)."""
    exe = Path(sys.executable).with_name("vllm")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vllm")
    if found is None:
        raise FileNotFoundError("the `vllm` command is not installed in this environment")
    return [found]


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat = session id
            pids.append(int(entry.name))
    return pids


class _LogFollower:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return []
        *lines, self.partial = (self.partial + chunk).split("\n")
        return lines


class VLLMServer:
    """``with VLLMServer(model, ["--executor", "esp"]) as srv: srv.url ...``"""

    def __init__(self, model: str, args: list[str] = (), port: int | None = None,
                 log_path: str | os.PathLike | None = None, env: dict | None = None,
                 start_timeout: float = 600.0):
        self.model, self.args = model, list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path or f"/tmp/vllm-serve-{self.port}.log")
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def start(self, on_log_line: Callable[[str], None] | None = None) -> "VLLMServer":
        """Start the server and wait until it answers /health. ``on_log_line`` sees each
        log line written meanwhile (the demo prints start-up progress from them)."""
        cmd = [*vllm_command(), "serve", self.model, "--port", str(self.port),
               "--host", "127.0.0.1", *self.args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        follow = _LogFollower(self.log_path) if on_log_line else None
        while time.monotonic() < deadline:
            if follow:
                for line in follow.new_lines():
                    on_log_line(line)
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}; "
                                   f"last log lines:\n{self.tail()}")
            if self.healthy():
                if follow:
                    for line in follow.new_lines():
                        on_log_line(line)
                return self
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vllm serve not healthy after {self.start_timeout:.0f} s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM the server, wait; returns pids that had to be killed (should be [])."""
        if self.proc is None:
            return []
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 15
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = _session_pids(sid)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()
        self.proc = None
        return leftovers

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
