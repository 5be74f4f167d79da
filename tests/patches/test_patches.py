"""Every patch: applies on the supported vLLM, refuses loudly outside it, applies once."""

from __future__ import annotations

import argparse

import pytest

import vllm_esp_patches
from vllm_esp_patches._patching import Patch, UnsupportedVLLMVersion, check_version


def test_installed_vllm_is_in_the_supported_range():
    # Fails loudly (with the message users would see) on an unsupported vLLM.
    check_version(vllm_esp_patches.vllm_version())


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "1.0.0", "0.9.0+cpu", "garbage"])
def test_every_patch_refuses_an_unsupported_vllm(version, monkeypatch):
    monkeypatch.delenv("VLLM_ESP_SKIP_VERSION_CHECK", raising=False)
    for patch in vllm_esp_patches.all_patches(on_demand=True):
        with pytest.raises(UnsupportedVLLMVersion, match="vLLM"):
            patch.apply(version=version)


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.33.5"])
def test_supported_versions_pass_the_guard(version):
    check_version(version)


def test_patches_apply_once():
    vllm_esp_patches.apply_all()
    assert vllm_esp_patches.apply_all() == []  # second call applies nothing
    assert all(p.applied for p in vllm_esp_patches.all_patches())


def test_patch_record_refuses_double_install():
    calls = []
    target = type("T", (), {})
    import sys
    import types

    mod = types.ModuleType("_fake_target_mod")
    mod.T = target
    sys.modules["_fake_target_mod"] = mod
    p = Patch(name="fake", target="_fake_target_mod:T", install=calls.append, why="test")
    assert p.apply(version="0.32.0") is True
    assert p.apply(version="0.32.0") is False
    assert calls == [target]


def test_executor_name_esp_resolves_to_esp_executor():
    from types import SimpleNamespace

    from vllm.v1.executor.abstract import Executor
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from vllm_esp.integration.executor import ESPExecutor

    vllm_esp_patches.apply_all()
    cfg = lambda b: SimpleNamespace(parallel_config=SimpleNamespace(distributed_executor_backend=b))
    assert Executor.get_class(cfg("esp")) is ESPExecutor
    assert Executor.get_class(cfg("mp")) is MultiprocExecutor  # stock names untouched


def test_scheduler_stats_esp_field_survives_engine_core_serialisation():
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    vllm_esp_patches.apply_all()
    stats = SchedulerStats(num_running_reqs=2)
    stats.esp = {"kv_used_blocks": [3, 4], "kv_total_blocks": [10, 10]}
    wire = MsgpackEncoder().encode(EngineCoreOutputs(scheduler_stats=stats))
    back = MsgpackDecoder(EngineCoreOutputs).decode(wire)
    assert back.scheduler_stats.esp == stats.esp
    assert back.scheduler_stats.num_running_reqs == 2
    assert SchedulerStats().esp is None  # stock code paths never see a value


def _serve_parser():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    vllm_esp_patches.apply_all()
    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())


def test_cli_executor_esp_folds_into_engine_args():
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = _serve_parser().parse_args(
        ["--model", "m", "--executor", "esp", "--esp-instances", "3", "--esp-policy", "fcfs"])
    ea = AsyncEngineArgs.from_cli_args(args)
    assert ea.distributed_executor_backend == "vllm_esp.integration.executor.ESPExecutor"
    assert ea.scheduler_cls == "vllm_esp.integration.scheduler.ESPScheduler"
    assert ea.additional_config["esp"] == {"instances": 3, "tp": 1, "policy": "fcfs",
                                           "parallel_prefill": True, "ring_prefill": True,
                                           "batch_rings": True, "instance_backend": "mp",
                                           "decode_minibatch": 16, "admission": "vllm",
                                           "lockstep": False}


def test_cli_instance_backend_flag():
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = _serve_parser().parse_args(["--model", "m", "--executor", "esp", "--esp-instances",
                                       "2", "--esp-instance-backend", "ray"])
    esp = AsyncEngineArgs.from_cli_args(args).additional_config["esp"]
    assert (esp["instances"], esp["instance_backend"]) == (2, "ray")
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model", "m", "--executor", "esp",
                                    "--esp-instance-backend", "slurm"])


def test_cli_admission_flag(capsys):
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = _serve_parser().parse_args(["--model", "m", "--executor", "esp", "--esp-instances",
                                       "2", "--esp-profile", "measured_cpu_tiny-llama",
                                       "--esp-admission", "manager"])
    esp = AsyncEngineArgs.from_cli_args(args).additional_config["esp"]
    assert (esp["admission"], esp["profile"]) == ("manager", "measured_cpu_tiny-llama")
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model", "m", "--executor", "esp",
                                    "--esp-admission", "greedy"])
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model", "m", "--executor", "esp", "--esp-instances",
                                    "2", "--esp-admission", "manager"])
    assert "needs a cost profile" in capsys.readouterr().err


def test_cli_help_says_executor_esp_alone_runs_one_instance(capsys):
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--help=ESP"])  # vLLM shows one group per --help=
    text = " ".join(capsys.readouterr().out.split())
    assert "instances it runs one instance" in text  # (argparse may wrap at a hyphen)


def test_cli_stock_executor_names_pass_through():
    from vllm.engine.arg_utils import AsyncEngineArgs

    ea = AsyncEngineArgs.from_cli_args(_serve_parser().parse_args(["--model", "m", "--executor", "mp"]))
    assert ea.distributed_executor_backend == "mp"
    assert ea.scheduler_cls is None


@pytest.mark.parametrize("argv,message", [
    (["--esp-instances", "2"], "--esp-instances needs --executor esp"),
    (["--esp-instances", "2", "--esp-tp", "1"], "--esp-instances, --esp-tp need --executor esp"),
    (["--executor", "mp", "--esp-instances", "2"], "use --executor esp"),
    (["--executor", "esp", "--pipeline-parallel-size", "2"], "pipeline parallelism"),
    (["--executor", "esp", "--esp-tp", "2", "--tensor-parallel-size", "4"], "disagrees"),
    # the same options given as --additional-config JSON are checked as early
    (["--distributed-executor-backend", "esp", "--additional-config",
      '{"esp": {"instances": 64}}'], "exceed this machine's limit"),
    (["--executor", "esp", "--additional-config", '{"esp": {"instances": 64}}'],
     "exceed this machine's limit"),
    (["--distributed-executor-backend", "vllm_esp.integration.executor.ESPExecutor",
      "--additional-config", '{"esp": {"instances": 0}}'], "positive integer"),
    (["--distributed-executor-backend", "esp", "--tensor-parallel-size", "2",
      "--additional-config", '{"esp": {"instances": 1}}'], "disagrees"),
    (["--additional-config", '{"esp": {"instancs": 2}}'], "unknown ESP option"),
    (["--executor", "esp", "--speculative-config",
      '{"method": "ngram", "num_speculative_tokens": 2}'], "speculative decoding"),
    (["--executor", "esp", "--kv-transfer-config",
      '{"kv_connector": "ExampleConnector", "kv_role": "kv_both"}'], "only the SwapConnector"),
    (["--executor", "esp", "--data-parallel-size", "2"], "use --esp-instances instead"),
])
def test_cli_bad_combinations_fail_with_a_reason(argv, message, capsys):
    # as `vllm serve` does it: a usage error while parsing, exit code 2, one line
    with pytest.raises(SystemExit) as exit_info:
        _serve_parser().parse_args(["--model", "m", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_from_cli_args_raises_value_error_for_programmatic_namespaces():
    from vllm.engine.arg_utils import AsyncEngineArgs

    ns = _serve_parser().parse_args(["--model", "m"])
    ns.executor, ns.esp_instances, ns.pipeline_parallel_size = "esp", 2, 2
    with pytest.raises(ValueError, match="pipeline parallelism"):
        AsyncEngineArgs.from_cli_args(ns)


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_cli_esp_instances_must_be_positive(value, capsys):
    with pytest.raises(SystemExit):
        _serve_parser().parse_args(["--model", "m", "--executor", "esp", "--esp-instances", value])
    assert "positive integer" in capsys.readouterr().err


def test_llm_kwargs_translation():
    from vllm_esp.options import apply_to_kwargs

    kw = apply_to_kwargs({"executor": "esp", "esp_instances": 2, "dtype": "float32"})
    assert kw["distributed_executor_backend"].endswith("ESPExecutor")
    assert kw["additional_config"]["esp"]["instances"] == 2 and kw["dtype"] == "float32"
    kw = apply_to_kwargs({"distributed_executor_backend": "esp", "esp_instances": 2})
    assert kw["distributed_executor_backend"].endswith("ESPExecutor")
    assert apply_to_kwargs({"dtype": "half"}) == {"dtype": "half"}  # stock use untouched
    with pytest.raises(ValueError, match="positive integer"):
        apply_to_kwargs({"executor": "esp", "esp_instances": 0})
    # a user scheduler next to --executor esp runs inside each instance
    kw = apply_to_kwargs({"executor": "esp", "scheduler_cls": "pkg.mod.MySched"})
    assert kw["additional_config"]["esp"]["instance_scheduler"] == "pkg.mod.MySched"
    assert kw["scheduler_cls"].endswith("ESPScheduler")


def test_esp_profile_flag_reaches_the_esp_config():
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = _serve_parser().parse_args(["--model", "m", "--executor", "esp", "--esp-instances",
                                       "2", "--esp-profile", "measured_cpu_tiny-llama"])
    ea = AsyncEngineArgs.from_cli_args(args)
    assert ea.additional_config["esp"]["profile"] == "measured_cpu_tiny-llama"


def test_policy_flags_map_to_the_length_aware_scheduler():
    from vllm_esp.options import apply_to_kwargs

    kw = apply_to_kwargs({"executor": "esp", "esp_policy": "alise", "esp_predictor": "online",
                          "additional_config": {"esp": {"aging_rate": 0.5}}})
    assert kw["additional_config"]["esp"] == {"instances": 1, "tp": 1, "policy": "alise",
                                              "predictor": "online", "aging_rate": 0.5,
                                              "parallel_prefill": True, "ring_prefill": True,
                                              "batch_rings": True, "instance_backend": "mp",
                                              "decode_minibatch": 16, "admission": "vllm",
                                           "lockstep": False}
    # without --executor esp the policy applies to stock vLLM's single scheduler
    kw = apply_to_kwargs({"esp_policy": "sjf", "esp_predictor": "oracle"})
    assert kw["scheduler_cls"] == "vllm_esp.scheduling.AliseScheduler"
    assert kw["additional_config"]["esp"] == {"policy": "sjf", "predictor": "oracle"}
    with pytest.raises(ValueError, match="unknown ESP option"):
        apply_to_kwargs({"executor": "esp", "additional_config": {"esp": {"instnces": 2}}})


def test_pooled_capacity_counts_every_instance_pool_only_for_esp_engines():
    """While an ESP engine's KV caches are sized, the check sees all its pools; any other
    time (stock engines), one."""
    from types import SimpleNamespace

    from vllm.v1.core import kv_cache_utils

    from vllm_esp_patches import apply_all, pooled_capacity

    apply_all()
    need = lambda: 300  # noqa: E731
    with pytest.raises(ValueError, match="max seq len"):  # stock: one pool of 200 < 300
        kv_cache_utils._check_enough_kv_cache_memory(200, need, 3072, lambda am: 0)
    seen = []
    original = kv_cache_utils.get_kv_cache_configs.__wrapped__

    def sizing(vllm_config, *args):  # stands in for vLLM's sizing: runs the check
        try:
            kv_cache_utils._check_enough_kv_cache_memory(200, need, 3072, lambda am: 0)
            seen.append("fits")
        except ValueError:
            seen.append("refused")

    esp = _esp_config(instances=2)
    esp.model_config = SimpleNamespace(get_sliding_window=lambda: None, use_mla=False,
                                       is_encoder_decoder=False, is_hybrid=False,
                                       hf_text_config=SimpleNamespace())
    esp.cache_config = SimpleNamespace(cache_dtype="auto")
    stock = _esp_config(backend="mp")
    for config in (esp, stock):
        token = pooled_capacity._pools.set(pooled_capacity.pool_count(config))
        try:
            sizing(config)
        finally:
            pooled_capacity._pools.reset(token)
    assert seen == ["fits", "refused"]
    assert callable(original)


def test_worker_names_carry_the_esp_instance(monkeypatch):
    import vllm.logger
    from vllm.v1.executor import multiproc_executor

    from vllm_esp_patches.worker_names import ENV, with_instance

    vllm_esp_patches.apply_all()
    assert with_instance("Worker", "1") == "Worker_ESP1"
    assert with_instance("Worker_TP1", "0") == "Worker_ESP0_TP1"
    assert with_instance("VllmWorker-0", "1") == "VllmWorker_ESP1-0"
    assert with_instance("Worker_ESP1", "1") == "Worker_ESP1"  # once only
    assert with_instance("EngineCore", "1") == "EngineCore"
    monkeypatch.delenv(ENV, raising=False)
    assert with_instance("Worker") == "Worker"  # not an ESP instance: vLLM's names
    assert type(multiproc_executor.get_mp_context()).__name__ != "_NamingContext"
    # what vLLM's worker code calls (module-level names) inserts the instance from the env
    monkeypatch.setenv(ENV, "2")
    assert type(multiproc_executor.get_mp_context()).__name__ == "_NamingContext"
    before = vllm.logger._vllm_process_info
    try:
        multiproc_executor.decorate_logs("Worker_TP1")
        assert vllm.logger._vllm_process_info[0] == "Worker_ESP2_TP1"
    finally:
        vllm.logger._vllm_process_info = before


def test_esp_environment_variables_are_known_to_vllm():
    import vllm.envs

    vllm_esp_patches.apply_all()
    for name in ("VLLM_ESP_DEBUG_PLAN", "VLLM_ESP_CPU_OVERSUBSCRIBE", "VLLM_ESP_INSTANCE"):
        assert name in vllm.envs.environment_variables


def _esp_config(instances=2, backend="vllm_esp.integration.executor.ESPExecutor"):
    from types import SimpleNamespace

    return SimpleNamespace(
        parallel_config=SimpleNamespace(distributed_executor_backend=backend,
                                        tensor_parallel_size=1),
        additional_config={"esp": {"instances": instances}})


def test_hints_are_checked_with_vllms_sampling_parameters():
    """validate_hints: a bad hint raises vLLM's validation error (a 400), also a ValueError.
    (The wrapper is installed on a stand-in of InputProcessor whose own check passes.)"""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from vllm_esp_patches import validate_hints

    class Processor:
        def _validate_params(self, params, *args, **kwargs):
            return None

    validate_hints._install(Processor)
    proc = Processor()
    proc.vllm_config = _esp_config()
    for bad in ({"esp_instances": 3}, {"esp_instances": "2"}, {"esp_prefill_instances": 0}):
        with pytest.raises(VLLMValidationError, match="must be an integer from 1 to 2") as e:
            proc._validate_params(SamplingParams(extra_args=bad), ())
        assert isinstance(e.value, ValueError)
    proc._validate_params(SamplingParams(extra_args={"esp_instances": 2}), ())
    proc.vllm_config = _esp_config(backend="mp")  # a stock engine: hints mean nothing
    proc._validate_params(SamplingParams(extra_args={"esp_instances": 9}), ())


def test_bad_hints_are_a_400_before_a_response_starts():
    """hint_errors_api: the serving layer's first check returns vLLM's 400 error response
    (installed on a stand-in whose model check passes)."""
    import asyncio
    from types import SimpleNamespace

    from vllm.entrypoints.serve.engine.serving import BaseServing

    from vllm_esp_patches import hint_errors_api

    class Serving:
        create_error_response = staticmethod(BaseServing.create_error_response)

        async def _check_model(self, request):
            return None

    hint_errors_api._install(Serving)
    serving = Serving()
    serving.engine_client = SimpleNamespace(vllm_config=_esp_config())
    bad = asyncio.run(serving._check_model(SimpleNamespace(vllm_xargs={"esp_instances": 0})))
    assert bad.error.code == 400 and "esp_instances must be an integer" in bad.error.message
    ok = asyncio.run(serving._check_model(SimpleNamespace(vllm_xargs={"esp_instances": 2})))
    assert ok is None
