"""Live-engine profiler run on the tiny model (slow: starts vLLM; excluded from CI)."""

import os

import pytest


@pytest.mark.slow
def test_profile_tiny_model_end_to_end(tmp_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm_esp.planner import CostModel
    from vllm_esp.profiler.cli import add_parser
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "p.json"
    args = parser.parse_args(["profile", "--model", "tiny", "--out", str(out), "--batch-sizes", "1,2,4",
                              "--lengths", "32,256,1024", "--decode-steps", "16", "--repeats", "2",
                              "--no-progress"])
    assert args.func(args) == 0
    cm = CostModel.load(out)
    from vllm_esp.profiler.cli import default_instances, machine_instances

    # by default every group size the planner needs on this machine is measured
    assert cm.meta.source == "measured"
    assert set(cm.prefill) == set(default_instances(machine_instances(1)))
    assert cm.prefill_time(1, 4 * 1024, 4 * 1024**2) > cm.prefill_time(1, 32, 32**2)
    assert (tmp_path / "p.json.points.jsonl").exists()
