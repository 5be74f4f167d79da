"""Find the largest request rate at which a system still meets an SLO.

Each evaluation is a whole serving run (simulated or real), so the search is frugal: bracket by
doubling/halving from a starting guess, then bisect geometrically until the bracket is within
``rel_tol``. It assumes SLO-feasibility is monotone in the rate (true in expectation; with
common random numbers across rates it holds in practice). Every evaluated point is kept, so the
same runs also draw the latency-vs-rate curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from vllm_esp.metrics.slo import SLO
from vllm_esp.metrics.summary import Summary


@dataclass
class SearchResult:
    max_rate: float  # req/s, largest evaluated rate that met the SLO (0 if none did)
    evaluations: dict[float, Summary] = field(default_factory=dict)  # rate -> summary
    capped: bool = False  # True if even ``hi`` met the SLO (the real max is higher)


def max_rate_under_slo(
    evaluate: Callable[[float], Summary],
    slo: SLO,
    start: float = 1.0,
    lo: float = 1e-3,
    hi: float = 1e3,
    rel_tol: float = 0.05,
    max_evals: int = 30,
    on_eval: Callable[[float, Summary, bool], None] | None = None,
) -> SearchResult:
    """Largest rate in ``[lo, hi]`` req/s whose run meets ``slo`` (to ``rel_tol``).

    ``evaluate(rate)`` runs the system at ``rate`` and returns its summary; ``on_eval`` is called
    after each run (progress bars, logging).
    """
    if not (0 < lo <= start <= hi):
        raise ValueError(f"need 0 < lo <= start <= hi, got {lo}, {start}, {hi}")
    res = SearchResult(0.0)

    def ok(rate: float) -> bool:
        if rate not in res.evaluations:
            if len(res.evaluations) >= max_evals:
                raise RuntimeError(f"max-rate search exceeded {max_evals} evaluations")
            res.evaluations[rate] = evaluate(rate)
            good = slo.met_by(res.evaluations[rate])
            if on_eval:
                on_eval(rate, res.evaluations[rate], good)
        return slo.met_by(res.evaluations[rate])

    rate = start
    if ok(rate):
        good, bad = rate, math.inf
        while bad == math.inf:
            nxt = min(good * 2, hi)
            if nxt == good:
                res.max_rate, res.capped = good, True
                return res
            if ok(nxt):
                good = nxt
            else:
                bad = nxt
    else:
        good, bad = 0.0, rate
        while good == 0.0:
            nxt = max(bad / 2, lo)
            if nxt == bad:
                return res  # not even ``lo`` meets the SLO
            if ok(nxt):
                good = nxt
            else:
                bad = nxt
    while bad / good > 1 + rel_tol:
        mid = math.sqrt(good * bad)
        if ok(mid):
            good = mid
        else:
            bad = mid
    res.max_rate = good
    return res
