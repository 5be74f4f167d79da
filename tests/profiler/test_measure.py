"""Profiler grid, resumable cache and fit, with a fake engine (no vLLM in these tests)."""

import argparse
import subprocess
import sys

import pytest

from vllm_esp.planner import Linear3, ProfileMeta
from vllm_esp.profiler.measure import Grid, PointCache, fit_profile, run_grid


class FakeTimer:
    """Times from a known model: prefill 5 ms + 2 µs/token + 1 ns/token²; decode likewise."""

    prefill_truth = Linear3(5e-3, 2e-6, 1e-9)
    decode_truth = Linear3(3e-3, 4e-4, 1e-7)

    def __init__(self, k):
        self.k, self.calls = k, 0

    def prefill(self, batch, length):
        self.calls += 1
        return self.prefill_truth(batch * length / self.k, batch * length**2 / self.k)

    def decode(self, batch, length, steps):
        self.calls += 1
        return self.decode_truth(batch, batch * (length + steps / 2) / self.k)


GRID = Grid(instances=(1, 2), batch_sizes=(1, 2, 4), lengths=(64, 256, 1024), decode_steps=8)


def test_grid_fit_recovers_the_known_model_per_k(tmp_path):
    timers = {}
    points = run_grid(lambda k: timers.setdefault(k, FakeTimer(k)), GRID, PointCache.open(tmp_path / "c.jsonl"))
    assert len(points) == 2 * 2 * 3 * 3
    meta = ProfileMeta("fake", "float32", 1, "none")
    cm = fit_profile(points, GRID, meta, kv_bytes_per_token=512, migration_bandwidth=1e9)
    for k in (1, 2):
        got, want = cm.prefill[k], FakeTimer.prefill_truth
        assert got.a == pytest.approx(want.a, rel=0.01)
        assert got.b == pytest.approx(want.b / k, rel=0.01)
        assert got.c == pytest.approx(want.c / k, rel=0.01)
        assert cm.decode[k].c == pytest.approx(FakeTimer.decode_truth.c / k, rel=0.01)
    assert max(meta.fit_mean_rel_error.values()) < 1e-6
    assert set(meta.fit_mean_rel_error) == {"prefill/k=1", "prefill/k=2", "decode/k=1", "decode/k=2"}


def test_interrupted_run_resumes_from_the_cache(tmp_path):
    path = tmp_path / "c.jsonl"

    class Dies(FakeTimer):
        def prefill(self, batch, length):
            if self.calls == 4:
                raise KeyboardInterrupt
            return super().prefill(batch, length)

    with pytest.raises(KeyboardInterrupt):
        run_grid(Dies, GRID, PointCache.open(path))
    assert len(PointCache.open(path).points) == 4
    fresh = {}
    points = run_grid(lambda k: fresh.setdefault(k, FakeTimer(k)), GRID, PointCache.open(path))
    assert len(points) == 36
    assert sum(t.calls for t in fresh.values()) == 36 - 4  # cached points are not re-measured
    again = run_grid(lambda k: pytest.fail("nothing left to measure"), GRID, PointCache.open(path))
    assert len(again) == 36


def test_cli_parser_is_light_and_parses_grids():
    from vllm_esp.profiler.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--model", "m", "--out", "o.json", "--instances", "1,2,4",
                              "--lengths", "16,32"])
    assert args.instances == (1, 2, 4) and args.lengths == (16, 32) and callable(args.func)
    code = "import sys, vllm_esp.profiler.cli; assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fit_refuses_groups_with_too_few_points():
    grid = Grid(instances=(1, 2), batch_sizes=(1, 2), lengths=(64, 256), decode_steps=8)
    points = run_grid(lambda k: FakeTimer(k), grid, PointCache.open(None))
    few = [p for p in points if not (p.k == 2 and p.phase == "decode" and p.batch == 2)]
    with pytest.raises(ValueError, match=r"decode k=2: 2 points, 3 needed"):
        fit_profile(few, grid, ProfileMeta("f", "float32", 1, "none"), 512, 1e9)


@pytest.mark.parametrize("batches,lengths", [((1,), (32, 128)), ((1, 2, 4), (128,))])
def test_grid_that_cannot_be_fitted_is_refused(batches, lengths):
    with pytest.raises(ValueError, match="at least 2 batch sizes and 2 lengths"):
        Grid((1,), batches, lengths).check()


def test_cli_refuses_an_unfittable_grid_before_starting_an_engine(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "vllm_esp.cli", "profile", "--model", "tiny",
                           "--out", str(out), "--batch-sizes", "1", "--lengths", "32"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == ("vllm-esp profile: error: a fit needs at least 2 batch sizes "
                                   "and 2 lengths, got --batch-sizes 1 --lengths 32")


def test_cli_help_shows_defaults_and_instances_default_to_what_the_planner_needs():
    from vllm_esp.profiler.cli import add_parser, default_instances

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    text = " ".join(sub.choices["profile"].format_help().split())
    assert "(default: 1,2,4,8)" in text and "(default: 32,128,512,1024)" in text
    assert "(default: 64)" in text and "(default: None)" not in text
    args = parser.parse_args(["profile", "--model", "m", "--out", "o.json"])
    assert args.batch_sizes == (1, 2, 4, 8) and args.instances is None
    assert default_instances(1) == (1,)
    assert default_instances(2) == (1, 2)
    assert default_instances(8) == (1, 2, 4, 8)
    assert default_instances(6) == (1, 2, 4, 6)


def test_an_empty_profile_is_refused_with_a_reason(tmp_path):
    from vllm_esp.planner import CostModel

    path = tmp_path / "empty.json"
    CostModel(ProfileMeta("f", "float32", 1, "none"), {}, {}, 512, 1e9).save(path)
    with pytest.raises(ValueError, match="no fitted prefill/decode"):
        CostModel.load(path)
    proc = subprocess.run([sys.executable, "-m", "vllm_esp.cli", "simulate", "--profile",
                           str(path), "-n", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("no fitted prefill/decode coefficients (an empty fit); "
                                        "measure it again with `vllm-esp profile`")
