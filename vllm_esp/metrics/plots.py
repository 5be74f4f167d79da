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


_STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"),
           ("X", "-."), ("*", ":")]


def plot_latency_vs_rate(
    curves: dict[str, dict[float, Summary]],
    path: str | Path,
    title: str = "",
    slo: SLO | None = None,
    max_rates: dict[str, float] | None = None,
) -> Path:
    """Write one PNG with a panel per normalised latency; ``curves[system][rate] = summary``.

    ``max_rates`` (req/s) label each system's line in the legend. The rate axis is
    logarithmic when the rates span more than 10×; with an SLO the y axis is latency / SLO
    (clipped at 3, the bound drawn at 1), so the crossing points are easy to read.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(16, 4.6))
    rates = [r for pts in curves.values() for r in pts if r > 0]
    log_x = bool(rates) and max(rates) > 10 * min(rates)
    for ax, (attr, slo_attr, label) in zip(axs, _PANELS):
        norm = getattr(slo, slo_attr) if slo else 1e-3
        for n, (system, points) in enumerate(curves.items()):
            xs = sorted(points)
            ys = [getattr(points[x], attr) / norm for x in xs]
            ys = [y if math.isfinite(y) else float("nan") for y in ys]
            if slo:
                ys = [min(y, 3.0) for y in ys]
            name = system
            if max_rates and system in max_rates:
                name = f"{system} (max {max_rates[system]:.3g} req/s)"
            marker, style = _STYLES[n % len(_STYLES)]
            ax.plot(xs, ys, marker=marker, linestyle=style, label=name, markersize=5)
        if slo:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_ylim(0, 3.05)
            ax.set_ylabel(f"{label} / SLO")
        else:
            ax.set_ylabel(f"{label} (ms/token)")
        ax.set_xlabel("request rate (req/s)")
        if log_x:
            from matplotlib.ticker import FormatStrFormatter, NullFormatter

            ax.set_xscale("log")
            ticks = sorted(set(rates))
            if len(ticks) > 8:  # many search points: every other one
                ticks = ticks[::2]
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    handles, labels = axs[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))),
               fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 if len(labels) > 4 else 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
