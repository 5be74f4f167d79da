"""The start-up lines: the pooled KV capacity, and a one-instance ESP engine said to be one."""

from __future__ import annotations

from vllm_esp.config import ESPConfig
from vllm_esp.integration.capacity import pool_summary
from vllm_esp.integration.executor import _describe_instances


def test_pooled_capacity_is_the_sum_of_the_instances():
    line = pool_summary([1136, 1136], tp=1, max_model_len=2048)
    assert "2 instances x 1,136 tokens = 2,272 tokens pooled" in line
    # vLLM's per-instance line would say 0.55x; over the pool a max-length request fits
    assert "maximum concurrency for 2,048 tokens per request: 1.11x over the pool" in line
    assert "1,000 + 2,000 tokens = 3,000 tokens pooled" in pool_summary([1000, 2000], 1, 1000)


def test_one_instance_is_said_to_be_one():
    line = pool_summary([4096], tp=2, max_model_len=1024)
    assert "1 instance x TP 2, 4,096 tokens" in line and "4.00x" in line
    assert "without --esp-instances N runs one instance" in line
    assert "runs one instance" in _describe_instances(ESPConfig())
    assert _describe_instances(ESPConfig(instances=3)) == "3 instances x TP 1 (3 workers)"
