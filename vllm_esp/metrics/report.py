"""Plain-text tables of summaries (markdown, so they paste into notes and docs)."""

from __future__ import annotations

import math

from vllm_esp.metrics.summary import Summary


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            if math.isinf(v) or math.isnan(v):
                return str(v)
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


SUMMARY_HEADERS = ["system", "rate", "done", "per-tok ms", "in-tok ms", "out-tok ms",
                   "TTFT p50 s", "TTFT p90 s", "TTFT p99 s", "TPOT p50 ms", "TPOT p90 ms",
                   "TPOT p99 ms", "thpt req/s"]


def summary_row(system: str, rate: float, s: Summary) -> list:
    return [system, rate, f"{s.num_finished}/{s.num_requests}", s.per_token_latency * 1e3,
            s.input_token_latency * 1e3, s.output_token_latency * 1e3, s.ttft_p50, s.ttft_p90,
            s.ttft_p99, s.tpot_p50 * 1e3, s.tpot_p90 * 1e3, s.tpot_p99 * 1e3, s.throughput]


def summary_table(runs: list[tuple[str, float, Summary]]) -> str:
    """Markdown table of (system, rate, summary) triples."""
    return markdown_table(SUMMARY_HEADERS, [summary_row(*run) for run in runs])
