"""Output-length predictors, chosen by name.

    make_predictor("online") | make_predictor("oracle") | make_predictor("hint", fallback="online")
    make_predictor("retrieval", encoder="auto", trace_file="past.jsonl")

The core does not import vLLM; the retrieval encoder imports torch/transformers lazily. A
scheduler runs retrieval in a child process (``background.BackgroundPredictor``).
"""

from __future__ import annotations

from typing import Any

from vllm_esp.predictor.base import LengthHistory, LengthPredictor, PredictRequest
from vllm_esp.predictor.metrics import PredictionErrorTracker, rank_correlation
from vllm_esp.predictor.oracle import HintPredictor, OraclePredictor
from vllm_esp.predictor.online import OnlineStatPredictor

PREDICTORS = ("online", "retrieval", "oracle", "hint")


def make_predictor(name: str, **options: Any) -> LengthPredictor:
    """Build a predictor by name; options are its constructor keywords (ValueError if wrong)."""
    try:
        if name == "online":
            return OnlineStatPredictor(**options)
        if name == "oracle":
            return OraclePredictor(**options)
        if name == "retrieval":
            from vllm_esp.predictor.retrieval import RetrievalPredictor

            return RetrievalPredictor(**options)
        if name == "hint":
            fallback = options.pop("fallback", "online")
            fallback_options = options.pop("fallback_options", {})
            return HintPredictor(make_predictor(fallback, **fallback_options), **options)
    except TypeError as e:
        raise ValueError(f"bad options for predictor {name!r}: {e}") from e
    raise ValueError(f"unknown predictor {name!r}; expected one of {', '.join(PREDICTORS)}")


__all__ = [
    "PREDICTORS", "HintPredictor", "LengthHistory", "LengthPredictor", "OnlineStatPredictor",
    "OraclePredictor", "PredictRequest", "PredictionErrorTracker", "make_predictor",
    "rank_correlation",
]
