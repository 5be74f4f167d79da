"""Online statistical predictor: no model, learns from finished requests by prompt features.

Requests of one application tend to share a prompt template (same leading tokens) and output
lengths cluster per template and per prompt-length range. The predictor keeps running means of
log output length at three levels of detail and backs off to the coarser one while a finer one
has too few samples:

    (template key, prompt-length bucket)  ->  template key  ->  prompt-length bucket  ->  global

The template key is the first ``prefix_tokens`` token ids; the length bucket is
``floor(log2(prompt_len))``. Means are of log length (the geometric mean), which is robust for
heavy-tailed lengths, and exponentially weighted (``decay``) so a drifting workload is tracked.
"""

from __future__ import annotations

import math

from vllm_esp.predictor.base import LengthPredictor, PredictRequest, clip_prediction


class _RunningLogMean:
    __slots__ = ("n", "mean")

    def __init__(self) -> None:
        self.n, self.mean = 0, 0.0

    def add(self, x: float, decay: float) -> None:
        self.n += 1
        # 1/n until the window is full, then a fixed EWMA weight.
        w = max(1.0 / self.n, 1.0 - decay)
        self.mean += w * (x - self.mean)


class OnlineStatPredictor(LengthPredictor):
    name = "online"

    def __init__(
        self,
        prefix_tokens: int = 4,
        min_samples: int = 3,
        decay: float = 0.98,
        default: float = 128.0,
    ):
        super().__init__()
        if prefix_tokens < 0 or min_samples < 1 or not 0.0 < decay < 1.0 or default <= 0:
            raise ValueError(
                "OnlineStatPredictor needs prefix_tokens >= 0, min_samples >= 1, "
                f"0 < decay < 1, default > 0; got {prefix_tokens}, {min_samples}, {decay}, "
                f"{default}"
            )
        self.prefix_tokens, self.min_samples = prefix_tokens, min_samples
        self.decay, self.default = decay, float(default)
        self._stats: dict[tuple, _RunningLogMean] = {}

    def _keys(self, req: PredictRequest) -> list[tuple]:
        """Finest to coarsest feature keys."""
        ids = req.prompt_token_ids
        prefix = tuple(ids[: self.prefix_tokens])
        bucket = int(math.log2(max(len(ids), 1)))
        return [("tb", prefix, bucket), ("t", prefix), ("b", bucket), ("g",)]

    def predict(self, req: PredictRequest) -> float:
        for key in self._keys(req):
            stat = self._stats.get(key)
            if stat is not None and stat.n >= self.min_samples:
                return clip_prediction(math.exp(stat.mean), req)
        stat = self._stats.get(("g",))
        value = math.exp(stat.mean) if stat is not None and stat.n > 0 else self.default
        return clip_prediction(value, req)

    def observe(self, req: PredictRequest, output_len: int) -> None:
        super().observe(req, output_len)
        x = math.log(max(int(output_len), 1))
        for key in self._keys(req):
            self._stats.setdefault(key, _RunningLogMean()).add(x, self.decay)
