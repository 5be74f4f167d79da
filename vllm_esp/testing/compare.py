"""Golden comparison of two runs' outputs (ESP against stock vLLM)."""

from __future__ import annotations

import pytest


def assert_same_outputs(got, ref, logprob_abs: float = 1e-4) -> None:
    """Same tokens for every request; where the reference has sample logprobs, each chosen
    token's logprob within ``logprob_abs``."""
    for g, r in zip(got, ref, strict=True):
        gc, rc = g.outputs[0], r.outputs[0]
        assert list(gc.token_ids) == list(rc.token_ids), g.request_id
        if not rc.logprobs:
            continue
        assert gc.logprobs is not None and len(gc.logprobs) == len(rc.logprobs), g.request_id
        for pos, (gl, rl) in enumerate(zip(gc.logprobs, rc.logprobs)):
            tok = rc.token_ids[pos]
            assert gl[tok].logprob == pytest.approx(rl[tok].logprob, abs=logprob_abs)
