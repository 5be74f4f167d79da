"""Service-level objectives on the three normalised latencies, and attainment.

LoongServe judges a system at a request rate by its *mean* per-token, input-token and
output-token latency (the curves of its Fig. 10, each normalised by an SLO); the max rate is
where the first curve crosses 1. ``SLO.met_by`` applies exactly that rule. ``attainment`` is the
per-request view (fraction of requests whose own three latencies are all within the SLO),
which is what "90% SLO attainment" style reports use.

``LOONGSERVE_SLOS`` are the thresholds from LoongServe's artifact plotting script
(``ae-plot-fig-10-11-12.py``), in ms/token, for LWM-1M-Text 7B on 8 A800 GPUs. They are tied to
that hardware: on another profile, scale them (``SLO.scaled``) or derive them from the
unloaded latency of the workload.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_esp.metrics.results import RequestResult
from vllm_esp.metrics.summary import Summary


@dataclass(frozen=True, slots=True)
class SLO:
    per_token: float  # s/token, bound on latency / (prompt + output)
    input_token: float  # s/token, bound on TTFT / prompt
    output_token: float  # s/token, bound on TPOT

    @classmethod
    def from_ms(cls, per_token_ms: float, input_token_ms: float, output_token_ms: float) -> "SLO":
        return cls(per_token_ms / 1e3, input_token_ms / 1e3, output_token_ms / 1e3)

    def scaled(self, factor: float) -> "SLO":
        return SLO(self.per_token * factor, self.input_token * factor, self.output_token * factor)

    def violations(self, s: Summary) -> list[str]:
        """Names of the mean latencies above their bound (empty when the SLO is met)."""
        out = []
        if not s.per_token_latency <= self.per_token:
            out.append("per_token")
        if not s.input_token_latency <= self.input_token:
            out.append("input_token")
        if not s.output_token_latency <= self.output_token:
            out.append("output_token")
        return out

    def met_by(self, s: Summary) -> bool:
        """LoongServe's rule: all three *mean* normalised latencies within bound."""
        return not self.violations(s) and s.num_finished == s.num_requests

    def met_by_request(self, r: RequestResult) -> bool:
        return (r.per_token_latency <= self.per_token
                and r.input_token_latency <= self.input_token
                and r.output_token_latency <= self.output_token)


def attainment(results: list[RequestResult], slo: SLO) -> float:
    """Fraction of requests whose own three normalised latencies meet ``slo``."""
    if not results:
        return 1.0
    return sum(slo.met_by_request(r) for r in results) / len(results)


# ms/token (per-token, input-token, output-token), from LoongServe's Fig. 10 plotting script.
LOONGSERVE_SLOS: dict[str, SLO] = {
    "sharegpt": SLO.from_ms(92, 20, 320),
    "leval": SLO.from_ms(3.5, 1.8, 320),
    "lveval": SLO.from_ms(2.5, 2.5, 365),
    "mixed": SLO.from_ms(70, 90, 360),
}
