"""Serving metrics shared by the simulator and the real-run replay client (standard library
only; plotting imports matplotlib lazily)."""

from vllm_esp.metrics.report import markdown_table, summary_table
from vllm_esp.metrics.results import RequestResult
from vllm_esp.metrics.search import SearchResult, max_rate_under_slo
from vllm_esp.metrics.slo import LOONGSERVE_SLOS, SLO, attainment
from vllm_esp.metrics.summary import Summary, percentile, summarize

__all__ = [
    "LOONGSERVE_SLOS", "RequestResult", "SLO", "SearchResult", "Summary", "attainment",
    "markdown_table", "max_rate_under_slo", "percentile", "summarize", "summary_table",
]
