"""Run a system on a workload at a rate, sweep rates, and search the max rate under an SLO.

Every run builds fresh engines from the same ``ClusterSpec`` and feeds them the same requests
with the same arrivals (``workloads.poisson`` with the run's seed): two systems compared at one
rate differ only in policy. Results are pure functions of (system, cost, spec, requests, rate,
seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from vllm_esp.metrics import SLO, SearchResult, Summary, max_rate_under_slo, summarize
from vllm_esp.metrics.results import RequestResult
from vllm_esp.planner import CostModel
from vllm_esp.simulator.core import run
from vllm_esp.simulator.systems import ClusterSpec, build
from vllm_esp.workloads import Request, poisson


@dataclass(frozen=True, slots=True)
class RunSpec:
    system: str
    cost: CostModel
    cluster: ClusterSpec
    seed: int = 0
    horizon_factor: float = 20.0  # stop at this × (last arrival) + horizon_slack; the rest
    horizon_slack: float = 600.0  # s            is unserved (fails the SLO)
    manager_cfg: object = None  # planner ManagerConfig for the planner systems (None: default)
    loongserve_cfg: object = None  # LoongServeConfig of the loongserve system (None: default)
    validate: bool = False  # check every planner plan with planner.validate (tests)


def simulate(rs: RunSpec, requests: list[Request], rate: float) -> list[RequestResult]:
    """One simulated run of ``requests`` arriving as Poisson(``rate``) with ``rs.seed``."""
    arrivals = poisson(requests, rate, rs.seed)
    engines, route = build(rs.system, rs.cost, rs.cluster, rs.manager_cfg, validate=rs.validate,
                           loongserve_cfg=rs.loongserve_cfg)
    last = arrivals[-1].arrival if arrivals else 0.0
    horizon = (rs.horizon_factor * last + rs.horizon_slack if math.isfinite(rs.horizon_factor)
               else math.inf)
    return run(arrivals, engines, route, horizon)


def sweep(rs: RunSpec, requests: list[Request], rates: list[float],
          on_run: Callable[[float, Summary], None] | None = None) -> dict[float, Summary]:
    out = {}
    for rate in rates:
        out[rate] = summarize(simulate(rs, requests, rate))
        if on_run:
            on_run(rate, out[rate])
    return out


def search_max_rate(rs: RunSpec, requests: list[Request], slo: SLO, start: float = 0.5,
                    rel_tol: float = 0.05, on_eval=None,
                    n_for_rate: Callable[[float], int] | None = None,
                    hi: float = 1e3) -> SearchResult:
    """Largest Poisson rate at which ``rs.system`` meets ``slo`` on ``requests``.

    ``n_for_rate(rate)`` picks how many of ``requests`` (a prefix) a run at ``rate`` uses;
    a fixed arrival *window* (n = rate × seconds) keeps the load sustained at every rate,
    whereas a fixed count turns high rates into one short burst.
    """
    def evaluate(rate: float) -> Summary:
        reqs = requests[:n_for_rate(rate)] if n_for_rate else requests
        return summarize(simulate(rs, reqs, rate))

    return max_rate_under_slo(evaluate, slo, start=start, lo=min(start, 1e-3), hi=hi,
                              rel_tol=rel_tol, on_eval=on_eval)
