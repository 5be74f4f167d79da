"""Prediction-error metric: mean absolute error and rank correlation of predicted lengths.

For SJF what matters is the *order* of predictions, so Spearman rank correlation is reported next
to MAE. The tracker keeps a sliding window of (predicted, actual) pairs of finished requests.
``export_prometheus`` publishes both as gauges; vLLM's API server collects gauges written by the
engine-core process through its prometheus multiprocess directory.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

logger = logging.getLogger(__name__)


def rank_correlation(pred, actual) -> float:
    """Spearman's rho with average ranks for ties; nan for fewer than 2 points or no variance."""
    a, b = np.asarray(pred, float), np.asarray(actual, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("rank_correlation needs two 1-D sequences of equal length")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(len(x), dtype=float)
    # average ranks over ties
    uniq, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(uniq))
    np.add.at(sums, inv, ranks)
    return (sums / counts)[inv]


class PredictionErrorTracker:
    def __init__(self, window: int = 1000):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.count = 0
        self._gauges = None

    def record(self, predicted: float, actual: int) -> None:
        self._pairs.append((float(predicted), float(actual)))
        self.count += 1

    def mae(self) -> float:
        if not self._pairs:
            return float("nan")
        return float(np.mean([abs(p - a) for p, a in self._pairs]))

    def spearman(self) -> float:
        if not self._pairs:
            return float("nan")
        p, a = zip(*self._pairs)
        return rank_correlation(p, a)

    def pairs(self) -> list[tuple[float, float]]:
        """The (predicted, actual) pairs in the window."""
        return list(self._pairs)

    def snapshot(self) -> dict[str, float]:
        return {"mae": self.mae(), "spearman": self.spearman(), "count": float(self.count)}

    def export_prometheus(self, labels: dict[str, str] | None = None) -> bool:
        """Set the gauges; False if prometheus_client is unavailable (then only logs exist)."""
        try:
            from prometheus_client import Gauge
        except ImportError:
            return False
        labels = labels or {}
        if self._gauges is None:
            names = sorted(labels)
            try:
                self._gauges = {
                    "mae": Gauge("vllm_esp:length_prediction_mae",
                                 "Mean absolute error of predicted output lengths (tokens)",
                                 labelnames=names, multiprocess_mode="mostrecent"),
                    "spearman": Gauge("vllm_esp:length_prediction_spearman",
                                      "Rank correlation of predicted vs actual output lengths",
                                      labelnames=names, multiprocess_mode="mostrecent"),
                }
            except ValueError:  # already registered in this process (second engine)
                from prometheus_client import REGISTRY

                collectors = REGISTRY._names_to_collectors  # noqa: SLF001
                self._gauges = {
                    "mae": collectors["vllm_esp:length_prediction_mae"],
                    "spearman": collectors["vllm_esp:length_prediction_spearman"],
                }
        for key, gauge in self._gauges.items():
            value = self.mae() if key == "mae" else self.spearman()
            (gauge.labels(**labels) if labels else gauge).set(value)
        return True
