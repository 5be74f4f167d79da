"""The one unit every manager trade-off is priced in: SLO-normalised latency per second.

LoongServe judges a deployment by three mean normalised latencies per request: per-token
(``latency / (prompt + output)``), input-token (``TTFT / prompt``) and output-token (TPOT). The
manager minimises their sum, each divided by its SLO (``LatencyWeights``, seconds per token;
all 1 when no SLO is configured: plain normalised latency). A scheduling choice delays some
requests by some seconds; what that costs is the seconds times each delayed request's *rate*:

* a waiting request (no token yet) loses ``1/(prompt·SLO_in) + 1/(total·SLO_pt)`` per second
  (its TTFT and its whole latency grow);
* a decoding request that is paused (or a preempted one waiting to re-prefill) loses
  ``1/((output−1)·SLO_out) + 1/(total·SLO_pt)`` per second (its TPOT and latency grow);

``total``/``output`` are the expected lengths (``Request.expected_total_tokens``: max_tokens
or a prediction), so the same information drives ESP and the baselines. Both sides of every
comparison (dispatch, compute pausing, compaction) are then in the same unit (1/s · s), which
is what the previous rule lacked (it compared a per-input-token gain with a per-output-token
cost, so an 800-token prompt waited seconds before it could pause a 50-request decode batch).

Estimated remaining decode time of a batch, ``remaining_steps · decode_time``, is the delay a
request avoids by not waiting for that batch (WSPT: prefill first iff
``T_prefill · Σ decode rates <= rate · remaining decode time``; LoongServe's dispatch compares
the same two products, req_queue.py ``generate_new_req_list``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import Request


@dataclass(frozen=True, slots=True)
class LatencyWeights:
    """SLO per normalised latency, seconds per token (1, 1, 1: unweighted normalised latency)."""

    per_token: float = 1.0
    input_token: float = 1.0
    output_token: float = 1.0

    def __post_init__(self) -> None:
        if min(self.per_token, self.input_token, self.output_token) <= 0:
            raise ValueError(f"SLO weights must be > 0 s/token, got {self}")


UNWEIGHTED = LatencyWeights()


def expected_output(req: Request) -> int:
    """Tokens ``req`` is expected to generate in all (max_tokens, or the prediction)."""
    return max(1, req.expected_total_tokens() - req.prompt_len)


def remaining_steps(req: Request) -> int:
    """Decode iterations ``req`` still needs at most (>= 1 while it runs)."""
    return max(1, expected_output(req) - req.output_len)


def decode_rate(req: Request, w: LatencyWeights = UNWEIGHTED) -> float:
    """Cost (1/s) per second a running (or preempted) request makes no progress."""
    total = max(1, req.expected_total_tokens())
    return 1.0 / (max(1, expected_output(req) - 1) * w.output_token) + 1.0 / (total * w.per_token)


def waiting_rate(req: Request, w: LatencyWeights = UNWEIGHTED) -> float:
    """Cost (1/s) per second a waiting request stays unadmitted."""
    if req.output_len > 0:  # preempted: its first token is out, it now loses TPOT
        return decode_rate(req, w)
    total = max(1, req.expected_total_tokens())
    return 1.0 / (max(1, req.prompt_len) * w.input_token) + 1.0 / (total * w.per_token)
