"""``vllm-esp simulate``: sweeps and searches over the workload's arrival window."""

import pytest

from vllm_esp.cli import main


def test_sweep_and_search_run_and_report(capsys, tmp_path):
    common = ["simulate", "--workload", "leval", "-n", "60", "--window", "30",
              "--systems", "esp_async,loongserve,chunked@4096"]
    assert main(common + ["--rates", "0.5,2", "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "highest swept rate meeting the SLO" in out and "esp_async / best baseline" in out
    assert (tmp_path / "p.png").stat().st_size > 0
    assert main(common + ["--search", "--rates", "1", "--no-plot"]) == 0
    assert "max rate under SLO" in capsys.readouterr().out


def test_unknown_system_fails_before_running():
    with pytest.raises(ValueError, match="unknown system"):
        main(["simulate", "--systems", "esp_async,vllm", "--no-plot"])
    with pytest.raises(ValueError, match="token budget"):
        main(["simulate", "--systems", "esp_async@8192", "--no-plot"])
