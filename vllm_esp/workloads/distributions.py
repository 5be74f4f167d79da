"""Parametric length distributions with closed-form statistics.

No dataset can be downloaded here, so the benchmark workloads are parametric stand-ins for the
real ones. Each distribution can report its own quantiles analytically, which is what the tests
check sampled statistics against (a generator whose samples drift from its documented
parameters is a bug, not noise).

Sampling is by inverse CDF from one uniform draw per value, using ``random.Random``: the same
seed gives the same lengths on every platform and Python version that keeps Mersenne Twister.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist

_N01 = NormalDist()


@dataclass(frozen=True, slots=True)
class TruncLogNormal:
    """Log-normal token length truncated to ``[lo, hi]`` and rounded down to an integer.

    ``median`` and ``sigma`` are those of the *untruncated* log-normal (``mu = ln median``);
    ``quantile`` gives the exact quantiles of the truncated one. Heavy right tails are what real
    prompt-length histograms (ShareGPT, L-Eval, LV-Eval) look like on a log axis.
    """

    median: float  # tokens, median of the untruncated law
    sigma: float  # standard deviation of ln(length)
    lo: int  # smallest length, tokens (inclusive)
    hi: int  # largest length, tokens (inclusive)

    def __post_init__(self) -> None:
        if not (1 <= self.lo <= self.hi) or self.sigma <= 0 or self.median <= 0:
            raise ValueError(f"bad TruncLogNormal {self}")

    def _cdf_bounds(self) -> tuple[float, float]:
        mu = math.log(self.median)
        a = _N01.cdf((math.log(self.lo) - mu) / self.sigma)
        b = _N01.cdf((math.log(self.hi + 1) - mu) / self.sigma)
        return a, b

    def quantile(self, p: float) -> float:
        """Continuous quantile of the truncated law (before integer rounding)."""
        a, b = self._cdf_bounds()
        u = min(max(a + p * (b - a), 1e-300), 1 - 1e-16)
        return math.exp(math.log(self.median) + self.sigma * _N01.inv_cdf(u))

    def sample(self, rng: random.Random) -> int:
        return min(self.hi, max(self.lo, int(self.quantile(rng.random()))))


@dataclass(frozen=True, slots=True)
class PowerLaw:
    """Zipf-like length law ``P(L) ∝ (L + beta) ** -alpha`` on ``[lo, hi]``.

    This is the continuous version of the Zipf mix LoongServe uses for its ablation (weights
    ``1/(x+b)^a`` over lengths 10..200000); larger ``alpha`` means more short requests. The
    continuous form has an exact inverse CDF, so sampling costs O(1) per request instead of a
    table of 200k weights.
    """

    alpha: float  # exponent (> 0)
    lo: int = 10  # tokens
    hi: int = 200_000  # tokens
    beta: float = 0.0  # shift, tokens

    def __post_init__(self) -> None:
        if self.alpha <= 0 or not (1 <= self.lo < self.hi) or self.lo + self.beta <= 0:
            raise ValueError(f"bad PowerLaw {self}")

    def _g(self, x: float) -> float:
        """Antiderivative of (x+beta)^-alpha."""
        if abs(self.alpha - 1.0) < 1e-12:
            return math.log(x + self.beta)
        return (x + self.beta) ** (1 - self.alpha) / (1 - self.alpha)

    def _g_inv(self, y: float) -> float:
        if abs(self.alpha - 1.0) < 1e-12:
            return math.exp(y) - self.beta
        return (y * (1 - self.alpha)) ** (1 / (1 - self.alpha)) - self.beta

    def cdf(self, x: float) -> float:
        x = min(max(x, self.lo), self.hi + 1)
        g0, g1 = self._g(self.lo), self._g(self.hi + 1)
        return (self._g(x) - g0) / (g1 - g0)

    def quantile(self, p: float) -> float:
        g0, g1 = self._g(self.lo), self._g(self.hi + 1)
        return self._g_inv(g0 + p * (g1 - g0))

    def sample(self, rng: random.Random) -> int:
        return min(self.hi, max(self.lo, int(self.quantile(rng.random()))))
