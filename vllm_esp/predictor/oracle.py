"""Predictors that read the length from the request itself.

* ``OraclePredictor`` — the true output length, put into ``SamplingParams.extra_args`` by a
  benchmark harness (HTTP: ``"vllm_xargs": {"output_len": 123}``). It is the upper bound that
  the learned predictors are compared against.
* ``HintPredictor`` — a client that knows roughly how long its answer will be (a classifier
  upstream, a summarisation job with a fixed budget) sends ``expected_output_len``; the hint is
  honoured and requests without one fall back to another predictor.
"""

from __future__ import annotations

from typing import Any

from vllm_esp.predictor.base import LengthPredictor, PredictRequest, clip_prediction

ORACLE_KEY = "output_len"
HINT_KEY = "expected_output_len"


def read_length(extra_args: Any, key: str) -> float | None:
    """The positive number stored under ``key``, None if absent; ValueError if malformed."""
    if not extra_args or key not in extra_args:
        return None
    value = extra_args[key]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"extra_args[{key!r}] must be a number, got {value!r}") from None
    if not value > 0:
        raise ValueError(f"extra_args[{key!r}] must be > 0, got {value!r}")
    return value


class OraclePredictor(LengthPredictor):
    """True lengths from the request. Missing lengths use ``default`` (or raise if strict)."""

    name = "oracle"

    def __init__(self, key: str = ORACLE_KEY, default: float = 128.0, strict: bool = False):
        super().__init__()
        if default <= 0:
            raise ValueError(f"default must be > 0, got {default}")
        self.key, self.default, self.strict = key, float(default), strict

    def predict(self, req: PredictRequest) -> float:
        value = read_length(req.extra_args, self.key)
        if value is None:
            if self.strict:
                raise ValueError(f"oracle predictor: request has no extra_args[{self.key!r}]")
            value = self.default
        return clip_prediction(value, req)

    def predict_remaining(self, initial: float, generated: int) -> float:
        # The oracle is exact; a request past its length only waits for its final step.
        return max(initial - generated, 1.0)


class HintPredictor(LengthPredictor):
    """Honours a client hint, otherwise delegates (and lets the fallback learn from all)."""

    name = "hint"

    def __init__(self, fallback: LengthPredictor, key: str = HINT_KEY):
        super().__init__()
        self.fallback, self.key = fallback, key
        self.history = fallback.history  # one length distribution for re-prediction

    def predict(self, req: PredictRequest) -> float:
        value = read_length(req.extra_args, self.key)
        if value is None:
            return self.fallback.predict(req)
        return clip_prediction(value, req)

    def observe(self, req: PredictRequest, output_len: int) -> None:
        self.fallback.observe(req, output_len)
