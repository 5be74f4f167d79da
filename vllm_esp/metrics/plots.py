"""PNG plots of latency vs request rate, one figure per dataset, one line per system.

The three panels are LoongServe's Fig. 10 columns (per-token, input-token, output-token mean
latency). With an SLO the y axis is latency / SLO, so the dashed line at 1 is the bound and a
system's max rate is where its curve crosses it. matplotlib is imported lazily with the Agg
backend: plotting must work on headless machines and must not slow down ``import``.
"""

from __future__ import annotations

import math
from pathlib import Path

from vllm_esp.metrics.slo import SLO
from vllm_esp.metrics.summary import Summary

_PANELS = (
    ("per_token_latency", "per_token", "per-token latency"),
    ("input_token_latency", "input_token", "input-token latency"),
    ("output_token_latency", "output_token", "output-token latency"),
)


def plot_latency_vs_rate(
    curves: dict[str, dict[float, Summary]],
    path: str | Path,
    title: str = "",
    slo: SLO | None = None,
) -> Path:
    """Write one PNG with a panel per normalised latency; ``curves[system][rate] = summary``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (attr, slo_attr, label) in zip(axs, _PANELS):
        norm = getattr(slo, slo_attr) if slo else 1e-3
        for system, points in curves.items():
            xs = sorted(points)
            ys = [getattr(points[x], attr) / norm for x in xs]
            ys = [y if math.isfinite(y) else float("nan") for y in ys]
            ax.plot(xs, ys, marker="o", label=system)
        if slo:
            ax.axhline(1.0, color="grey", linestyle="--")
            ax.set_ylim(0, 2.0)
            ax.set_ylabel(f"{label} / SLO")
        else:
            ax.set_ylabel(f"{label} (ms/token)")
        ax.set_xlabel("request rate (req/s)")
        ax.set_xlim(left=0)
    axs[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
