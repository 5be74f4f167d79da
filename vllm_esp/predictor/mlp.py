"""A tiny numpy MLP regressor trained online: the retrieval predictor's learned fallback.

When no stored prompt is similar enough to a new one, a nearest-neighbour average is noise; a
regressor from embedding to log output length still generalises across the index. It is small
(one hidden layer), trained by plain SGD on a bounded replay buffer a few steps per observation,
so the cost per finished request is a few microseconds-to-milliseconds and needs no torch.
"""

from __future__ import annotations

import numpy as np


class OnlineMLP:
    def __init__(self, in_dim: int, hidden: int = 64, lr: float = 0.01, seed: int = 0,
                 buffer: int = 2048, steps_per_observe: int = 4, batch: int = 32):
        if in_dim < 1 or hidden < 1 or lr <= 0:
            raise ValueError(f"OnlineMLP needs in_dim, hidden >= 1 and lr > 0")
        rng = np.random.default_rng(seed)
        self.w1 = (rng.standard_normal((in_dim, hidden)) / np.sqrt(in_dim)).astype(np.float32)
        self.b1 = np.zeros(hidden, np.float32)
        self.w2 = (rng.standard_normal(hidden) / np.sqrt(hidden)).astype(np.float32)
        self.b2 = np.float32(0.0)
        self.lr, self.steps, self.batch = lr, steps_per_observe, batch
        self._rng = rng
        self._x = np.zeros((buffer, in_dim), np.float32)
        self._y = np.zeros(buffer, np.float32)
        self.n_seen = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        return h @ self.w2 + self.b2

    def _sgd(self, x: np.ndarray, y: np.ndarray) -> None:
        h_pre = x @ self.w1 + self.b1
        h = np.maximum(h_pre, 0.0)
        err = (h @ self.w2 + self.b2) - y  # d(0.5*err^2)/dpred
        n = len(y)
        g_w2 = h.T @ err / n
        g_b2 = err.mean()
        g_h = np.outer(err, self.w2) * (h_pre > 0)
        g_w1 = x.T @ g_h / n
        g_b1 = g_h.mean(0)
        self.w2 -= self.lr * g_w2
        self.b2 -= self.lr * g_b2
        self.w1 -= self.lr * g_w1
        self.b1 -= self.lr * g_b1

    def observe(self, x: np.ndarray, y: float) -> None:
        cap = len(self._y)
        slot = self.n_seen % cap
        self._x[slot], self._y[slot] = x, y
        self.n_seen += 1
        filled = min(self.n_seen, cap)
        if self.n_seen == 1:
            self.b2 = np.float32(y)  # start at the first target instead of 0 (log-length scale)
        for _ in range(self.steps):
            idx = self._rng.integers(0, filled, size=min(self.batch, filled))
            self._sgd(self._x[idx], self._y[idx])
