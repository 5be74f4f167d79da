"""Max request rate under an SLO for several systems on one workload, and ESP's ratios to them.

Shared by ``benchmarks/bench_simulate.py``, ``vllm-esp simulate --search`` and the CI table
test. Each run of a search uses a prefix of the same request pool, as many requests as arrive
in a fixed *window* at that rate (``window_n``): a fixed request count would turn high rates
into one short burst that "meets" the SLO at any rate. ``loongserve`` runs with LoongServe's
evaluation settings for the dataset (``EVAL_SETTINGS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from vllm_esp.metrics import SLO, SearchResult
from vllm_esp.planner import CostModel
from vllm_esp.simulator.runner import RunSpec, search_max_rate
from vllm_esp.simulator.systems import ClusterSpec, parse_system
from vllm_esp.workloads import Request

ESP_SYSTEMS = ("esp_async", "esp")  # this project's manager (the rest are baselines)
# per workload: arrival window (s), first rate of a search and rate range of a sweep (req/s)
WINDOWS = {"sharegpt": 60.0, "leval": 300.0, "lveval": 1200.0, "mixed": 600.0}
START_RATES = {"sharegpt": 4.0, "leval": 0.5, "lveval": 0.05, "mixed": 0.2}
SWEEPS = {"sharegpt": (5.0, 160.0), "leval": (0.5, 8.0), "lveval": (0.05, 1.6),
          "mixed": (0.25, 8.0)}
DEFAULT_WINDOW, DEFAULT_START, DEFAULT_SWEEP = 300.0, 0.5, (0.25, 8.0)


def window_n(rate: float, window: float, min_n: int, max_n: int) -> int:
    """Requests arriving in ``window`` seconds at ``rate`` req/s, clamped to [min_n, max_n]."""
    return min(max_n, max(min_n, int(rate * window)))


SUSTAINED = 1.5  # a sustained run finishes every request by 1.5 × its last arrival


def run_spec(system: str, cost: CostModel, spec: ClusterSpec, dataset: str | None,
             seed: int = 0, manager_cfg=None, sustained: bool = False) -> RunSpec:
    """The run of ``system``; ``loongserve`` gets its evaluation settings for ``dataset``.

    ``sustained``: requests unfinished at ``SUSTAINED ×`` the last arrival count as unserved
    (so fail the SLO). LoongServe's criterion alone (mean normalised latencies of a finite
    window) is met by a system that falls behind, as long as the backlog it leaves is served
    before the default horizon (20 × the window): serving short requests first keeps the means
    low while long ones wait for hours. A sustained run must keep up with the arrivals.
    """
    from vllm_esp.planner.policies import EVAL_SETTINGS, LoongServeConfig

    ls = None
    if parse_system(system)[0] == "loongserve":
        ls = LoongServeConfig(**EVAL_SETTINGS.get(dataset or "", {}))
    horizon = dict(horizon_factor=SUSTAINED, horizon_slack=0.0) if sustained else {}
    return RunSpec(system, cost, spec, seed, manager_cfg=manager_cfg, loongserve_cfg=ls,
                   **horizon)


@dataclass
class Comparison:
    """Search results of every system on one dataset."""

    dataset: str
    results: dict[str, SearchResult] = field(default_factory=dict)

    def rate(self, system: str) -> float:
        return self.results[system].max_rate

    def best_baseline(self) -> tuple[str, float]:
        """The baseline (not ESP) with the highest max rate."""
        base = {s: r.max_rate for s, r in self.results.items() if s not in ESP_SYSTEMS}
        if not base:
            raise ValueError("no baseline in this comparison")
        name = max(base, key=lambda s: (base[s], s))
        return name, base[name]

    def ratio(self, system: str, other: str) -> float:
        a, b = self.rate(system), self.rate(other)
        return a / b if b > 0 else (math.inf if a > 0 else math.nan)


def sweep_systems(systems: list[str], cost: CostModel, spec: ClusterSpec, dataset: str,
                  pool: list[Request], rates: list[float], window: float, min_n: int = 40,
                  seed: int = 0, manager_cfg=None,
                  on_run: Callable[[str, float, object], None] | None = None,
                  sustained: bool = False) -> dict[str, dict[float, object]]:
    """``{system: {rate: Summary}}``: every system at every rate, ``window_n`` requests each."""
    from vllm_esp.metrics import summarize
    from vllm_esp.simulator.runner import simulate

    out: dict[str, dict[float, object]] = {}
    for system in systems:
        rs = run_spec(system, cost, spec, dataset, seed, manager_cfg, sustained)
        out[system] = {}
        for rate in rates:
            reqs = pool[:window_n(rate, window, min_n, len(pool))]
            out[system][rate] = summarize(simulate(rs, reqs, rate))
            if on_run:
                on_run(system, rate, out[system][rate])
    return out


def compare(systems: list[str], cost: CostModel, spec: ClusterSpec, dataset: str,
            pool: list[Request], slo: SLO, window: float, start: float, min_n: int = 40,
            max_n: int | None = None, rel_tol: float = 0.1, seed: int = 0,
            manager_cfg=None,
            on_eval: Callable[[str, float, object, bool], None] | None = None,
            sustained: bool = False) -> Comparison:
    """Search the max rate of each system; runs use prefixes of ``pool`` (``window_n``)."""
    max_n = max_n or len(pool)
    if max_n > len(pool):
        raise ValueError(f"max_n={max_n} exceeds the pool of {len(pool)} requests")
    out = Comparison(dataset)
    for system in systems:
        rs = run_spec(system, cost, spec, dataset, seed, manager_cfg, sustained)
        out.results[system] = search_max_rate(
            rs, pool, slo, start=start, rel_tol=rel_tol,
            n_for_rate=lambda r: window_n(r, window, min_n, max_n), hi=max_n / window,
            on_eval=(lambda r, s, ok, system=system: on_eval(system, r, s, ok))
            if on_eval else None)
    return out
