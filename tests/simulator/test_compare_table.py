"""A small simulated max-rate table: ESP (esp_async) at least matches every baseline.

Reduced sizes of benchmarks/bench_simulate.py (2 instances × TP2, estimated A100 profile,
short arrival windows, coarse search) so each case runs in seconds. ShareGPT's SLO is
tightened 10× because a 20 s window of short requests never builds the backlog the real
SLO's slack (~100 s per request) needs to be crossed; L-Eval keeps LoongServe's SLO.
"""

import pytest

from vllm_esp.metrics import LOONGSERVE_SLOS
from vllm_esp.planner.cost_model import load_builtin
from vllm_esp.simulator.compare import compare
from vllm_esp.simulator.systems import ClusterSpec, kv_tokens_from_memory
from vllm_esp.workloads import generate

BASELINES = ["loongserve", "static_sp", "replicas", "chunked", "chunked_dp", "disagg"]
CASES = {  # dataset: (SLO scale, window s, requests at most, first rate req/s)
    "sharegpt": (0.1, 20.0, 500, 4.0),  # short requests
    "leval": (1.0, 60.0, 300, 0.5),  # long prompts
}


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_esp_at_least_matches_every_baseline(dataset):
    scale, window, max_n, start = CASES[dataset]
    cost = load_builtin("estimated_a100-80g_lwm-7b-1m_tp2")
    spec = ClusterSpec(num_instances=2, kv_tokens_per_instance=kv_tokens_from_memory(cost))
    comp = compare(["esp_async"] + BASELINES, cost, spec, dataset, generate(dataset, max_n, 0),
                   LOONGSERVE_SLOS[dataset].scaled(scale), window, start, min_n=20,
                   rel_tol=0.3)
    best, rate = comp.best_baseline()
    assert rate > 0 and not comp.results[best].capped  # the table measured something
    for system in BASELINES:
        assert comp.rate("esp_async") >= comp.rate(system), (system, comp.rate(system))
