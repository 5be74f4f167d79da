"""What one served request looked like: the record both the simulator and the replay client emit.

Times are absolute seconds on the run's clock (0 = start of the run). A request that never
finished (cut off at the end of a simulation, rejected, or timed out against a real server) has
``finish = inf``; every latency derived from it is then infinite, so it can never count as
meeting an SLO and it drags means to infinity instead of silently disappearing from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestResult:
    request_id: int
    prompt_len: int  # input tokens
    output_len: int  # generated tokens (the first one comes out of prefill)
    arrival: float  # s, when the request was issued
    first_token: float  # s, when its first output token was available (inf if never)
    finish: float  # s, when its last output token was available (inf if never)

    @property
    def finished(self) -> bool:
        return math.isfinite(self.finish)

    @property
    def latency(self) -> float:
        """End-to-end latency, s."""
        return self.finish - self.arrival

    @property
    def ttft(self) -> float:
        """Time to first token, s."""
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first, s (0 for single-token outputs)."""
        if not math.isfinite(self.finish):
            return math.inf
        if self.output_len <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.output_len - 1)

    # LoongServe's three normalised latencies (its lib_benchmark_serving.metrics):
    @property
    def per_token_latency(self) -> float:
        """Latency / (prompt + output tokens), s/token: the headline metric."""
        return self.latency / (self.prompt_len + self.output_len)

    @property
    def input_token_latency(self) -> float:
        """TTFT / prompt tokens, s/token: how well prefill scales with prompt length."""
        return self.ttft / self.prompt_len

    @property
    def output_token_latency(self) -> float:
        """TPOT, s/token: decoding speed as the user sees it."""
        return self.tpot
