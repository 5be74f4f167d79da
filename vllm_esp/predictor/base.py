"""The output-length predictor interface.

A scheduler that orders work by job length needs a guess of each request's output length at
arrival, and a fresh guess when a request outlives the first one. Predictors differ only in where
that guess comes from (an oracle in the request, a client hint, statistics of finished requests,
similar past prompts), so they share one small interface and the scheduler never knows which one
it holds. Nothing here imports vLLM or torch: predictors are unit-testable and usable from the
simulator.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PredictRequest:
    """What a predictor may look at. Built once per request by the scheduler."""

    prompt_token_ids: Sequence[int]  # token ids of the prompt
    prompt_text: str | None = None  # decoded prompt if available (retrieval embeds text)
    extra_args: Mapping[str, Any] | None = None  # SamplingParams.extra_args (HTTP: vllm_xargs)
    max_tokens: int | None = None  # hard cap on output tokens; predictions are clipped to it
    memo: dict = field(default_factory=dict)  # per-request cache of derived features (embedding)


@dataclass
class LengthHistory:
    """Sorted output lengths of finished requests, for mean-residual-life re-prediction.

    When a request has produced ``g`` tokens and has not stopped, the expected number of tokens
    still to come is ``E[L - g | L > g]``; the empirical version is the mean over observed lengths
    greater than ``g``. It is bounded (cannot favour a request forever) and grows with ``g``
    for heavy tails (a request that outlived its prediction is not starved either: it gets the
    honest estimate of the population that ran this long).
    """

    max_items: int = 4096
    _sorted: list[int] = field(default_factory=list)
    _order: list[int] = field(default_factory=list)  # insertion order, for bounded memory

    def add(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"output length must be >= 0, got {length}")
        bisect.insort(self._sorted, length)
        self._order.append(length)
        if len(self._order) > self.max_items:
            old = self._order.pop(0)
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def __len__(self) -> int:
        return len(self._sorted)

    def mean(self) -> float | None:
        return sum(self._sorted) / len(self._sorted) if self._sorted else None

    def mean_residual(self, generated: int) -> float | None:
        """E[L - g | L > g] over the history, or None when no observed length exceeds g."""
        i = bisect.bisect_right(self._sorted, generated)
        tail = self._sorted[i:]
        if not tail:
            return None
        return sum(tail) / len(tail) - generated


class LengthPredictor(ABC):
    """Predicts a request's total output length in tokens.

    ``predict`` is called once at arrival; ``predict_remaining`` every scheduling iteration (it
    must be cheap: the default only does arithmetic); ``observe`` once per finished request so
    online predictors learn. Predictions are floats >= 1.
    """

    name: str = "base"

    def __init__(self) -> None:
        self.history = LengthHistory()

    @abstractmethod
    def predict(self, req: PredictRequest) -> float:
        """Expected total number of output tokens for a new request."""

    def predict_many(self, reqs: Sequence[PredictRequest]) -> list[float]:
        """``predict`` for several requests; predictors with a batched model override it."""
        return [self.predict(r) for r in reqs]

    def observe(self, req: PredictRequest, output_len: int) -> None:
        """Learn from a finished request. The default only records the length distribution."""
        self.history.add(int(output_len))

    def predict_remaining(self, initial: float, generated: int) -> float:
        """Expected tokens still to come, given the arrival prediction and progress so far.

        While the request is within its prediction, the remainder is the difference. Once it
        has outlived it, it is re-predicted from the population of requests that ran at least
        as long (mean residual life); with no such history the remainder is taken equal to what
        was already produced (the doubling rule: the estimate grows geometrically, so a long
        request's priority decays smoothly instead of flipping).
        """
        if generated < 0:
            raise ValueError(f"generated must be >= 0, got {generated}")
        left = initial - generated
        if left >= 1.0:
            return left
        residual = self.history.mean_residual(generated)
        if residual is not None:
            return max(residual, 1.0)
        return float(max(generated, 1))


def clip_prediction(value: float, req: PredictRequest) -> float:
    """Clamp to [1, max_tokens]: no predictor may claim more than the request can produce."""
    value = max(float(value), 1.0)
    if req.max_tokens is not None and req.max_tokens > 0:
        value = min(value, float(req.max_tokens))
    return value
