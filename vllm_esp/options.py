"""Map the user-facing ESP options onto fields vLLM already has.

One function, :func:`apply`, serves every entry point: the ``vllm serve`` flags (through the
``cli_args`` patch), ``vllm_esp.LLM(model, executor="esp", esp_instances=N)`` and tests.
``executor="esp"`` means: ``distributed_executor_backend`` = the ESP executor (a dotted path,
so it resolves with or without the plugin), ``scheduler_cls`` = the ESP scheduler unless the
user chose one, and the ESP options in ``additional_config["esp"]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from vllm_esp import qualnames
from vllm_esp.config import (
    ADMISSION_CHOICES,
    EXECUTOR_CHOICES,
    EXECUTOR_QUALNAME,
    INSTANCE_BACKEND_CHOICES,
    POLICY_CHOICES,
    PREDICTOR_CHOICES,
    SCHEDULER_QUALNAME,
    ESPConfig,
)

STOCK_SCHEDULER = qualnames.STOCK_SCHEDULER
SWAP_CONNECTOR = "SwapConnector"  # the one KV connector ESP runs (one per instance)

# user-facing option name -> ESPConfig field
ESP_OPTIONS = {
    "esp_instances": "instances",
    "esp_tp": "tp",
    "esp_policy": "policy",
    "esp_cpu_bind": "cpu_bind",
    "esp_predictor": "predictor",
    "esp_profile": "profile",
    "esp_instance_backend": "instance_backend",
    "esp_admission": "admission",
}
LENGTH_AWARE_SCHEDULER = qualnames.LENGTH_AWARE_SCHEDULER


def apply(
    executor: str | None,
    esp: dict[str, Any],
    *,
    scheduler_cls: Any = None,
    additional_config: dict[str, Any] | None = None,
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int = 1,
) -> dict[str, Any]:
    """Return the EngineArgs field updates for ``executor`` and the ESP options ``esp``.

    ``esp`` uses ESPConfig field names; None values mean "not given". Raises ValueError with
    a one-line reason for combinations that cannot work.
    """
    esp = {k: v for k, v in esp.items() if v is not None}
    if executor is None:
        if esp and set(esp) <= {"policy", "predictor"} and esp.get("policy", "alise") != "fcfs":
            # length-aware scheduling on stock vLLM (one instance, its own executor)
            cfg = dict(additional_config or {})
            cfg["esp"] = {**cfg.get("esp", {}), **esp}
            ESPConfig.from_dict(cfg["esp"])  # validates
            return {"scheduler_cls": LENGTH_AWARE_SCHEDULER, "additional_config": cfg}
        if esp:
            flags = ", ".join(f"--esp-{k.replace('_', '-')}" for k in esp)
            raise ValueError(f"{flags} {'needs' if len(esp) == 1 else 'need'} --executor esp")
        return {}
    if executor not in EXECUTOR_CHOICES:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTOR_CHOICES)}, got {executor!r}")
    if executor != "esp":
        if esp:
            raise ValueError(f"ESP options given with --executor {executor}; use --executor esp")
        return {"distributed_executor_backend": executor}

    if pipeline_parallel_size and pipeline_parallel_size > 1:
        raise ValueError("--executor esp does not support pipeline parallelism (--pipeline-parallel-size > 1)")
    if "tp" in esp and tensor_parallel_size not in (None, 1, esp["tp"]):
        raise ValueError(
            f"--esp-tp {esp['tp']} disagrees with --tensor-parallel-size {tensor_parallel_size}"
        )
    if "tp" not in esp and tensor_parallel_size:
        esp["tp"] = tensor_parallel_size
    user_scheduler = _qualname(scheduler_cls)
    if user_scheduler not in (None, SCHEDULER_QUALNAME, STOCK_SCHEDULER):
        # A scheduler named next to --executor esp runs inside every instance.
        esp.setdefault("instance_scheduler", user_scheduler)
    merged_config = dict(additional_config or {})
    merged = {**merged_config.get("esp", {}), **esp}
    cfg = ESPConfig.from_dict(merged)  # validates
    merged_config["esp"] = {**merged, **cfg.to_dict()}  # keeps the scheduler's own keys
    updates: dict[str, Any] = {
        "distributed_executor_backend": EXECUTOR_QUALNAME,
        "additional_config": merged_config,
        "tensor_parallel_size": cfg.tp,
    }
    updates["scheduler_cls"] = SCHEDULER_QUALNAME
    return updates


def _qualname(obj: Any) -> str | None:
    if obj in (None, ""):
        return None
    if isinstance(obj, str):
        return obj
    return f"{obj.__module__}.{obj.__qualname__}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def uses_esp(fields: dict[str, Any]) -> bool:
    """Do these EngineArgs fields select the ESP executor?"""
    return _qualname(fields.get("distributed_executor_backend")) in ("esp", EXECUTOR_QUALNAME)


def check_engine_fields(fields: dict[str, Any]) -> None:
    """ValueError (one line) for ESP options in EngineArgs fields that cannot start.

    ``fields`` are the values ``vllm serve`` parsed, after :func:`apply` folded the
    ``--esp-*`` flags in. The ``esp`` section of ``additional_config`` is checked whichever
    way it came (flags or ``--additional-config`` JSON), and with the ESP executor (named
    "esp" or by its dotted path) also what the executor would refuse in the engine process:
    its tensor-parallel size, pipeline or data parallelism, speculative decoding, a KV
    connector other than the swap connector and more workers than this machine holds.
    """
    raw = (fields.get("additional_config") or {}).get("esp")
    backend = _qualname(fields.get("distributed_executor_backend"))
    uses_esp = backend in ("esp", EXECUTOR_QUALNAME)
    if raw is None and not uses_esp:
        return
    cfg = ESPConfig.from_dict(raw)
    if not uses_esp:
        return
    tp = fields.get("tensor_parallel_size") or 1
    if cfg.tp != tp:
        raise ValueError(f"ESP tp={cfg.tp} (additional_config esp.tp) disagrees with "
                         f"--tensor-parallel-size {tp}; set both to the same value")
    if (fields.get("pipeline_parallel_size") or 1) > 1:
        raise ValueError("--executor esp does not support pipeline parallelism "
                         "(--pipeline-parallel-size > 1)")
    if (fields.get("data_parallel_size") or 1) > 1:
        raise ValueError("--executor esp replaces data parallelism; use --esp-instances instead")
    if fields.get("speculative_config"):
        raise ValueError("--executor esp does not support speculative decoding yet")
    kvt = fields.get("kv_transfer_config")
    connector = kvt.get("kv_connector") if isinstance(kvt, dict) else \
        getattr(kvt, "kv_connector", None)
    if connector not in (None, SWAP_CONNECTOR):
        raise ValueError(f"--executor esp supports only the {SWAP_CONNECTOR} KV connector "
                         f"(per-instance swap to host memory), got {connector}")
    from vllm.platforms import current_platform

    from vllm_esp.config import check_worker_limit

    check_worker_limit(cfg, on_cpu=current_platform.is_cpu())


def add_argument_group(parser: argparse.ArgumentParser) -> bool:
    """Add ``--executor`` and ``--esp-*`` to a vLLM engine-args parser; False if present."""
    if "--executor" in getattr(parser, "_option_string_actions", {}):
        return False
    group = parser.add_argument_group(
        "ESP", "Elastic sequence parallelism (vllm-esp). --executor esp enables it."
    )
    group.add_argument(
        "--executor",
        choices=EXECUTOR_CHOICES,
        default=None,
        help="Executor: esp (elastic sequence parallelism over --esp-instances model "
        "instances; without --esp-instances it runs one instance) or one of vLLM's own "
        "(mp, uni, ray).",
    )
    group.add_argument("--esp-instances", type=_positive_int, default=None,
                       help="Number of model instances (replicas), each with its own KV cache "
                       "(default with --executor esp: 1).")
    group.add_argument("--esp-tp", type=_positive_int, default=None,
                       help="Tensor-parallel workers per instance (= --tensor-parallel-size).")
    group.add_argument("--esp-policy", choices=POLICY_CHOICES, default=None,
                       help="Queue order inside each instance: fcfs (vLLM's), sjf or alise "
                       "(shortest predicted job first; alise adds aging and preemption). "
                       "Without --executor esp, sjf/alise apply to stock vLLM.")
    group.add_argument("--esp-predictor", choices=PREDICTOR_CHOICES, default=None,
                       help="Output-length predictor of the sjf/alise policies: online "
                       "(default; prompt-template statistics, a dict look-up), retrieval "
                       "(similar past prompts by a sentence encoder, run in a background "
                       "process on idle CPU; needs the retrieval extra), oracle or hint (a "
                       "length in the request's vllm_xargs).")
    group.add_argument("--esp-profile", default=None,
                       help="Cost profile (a JSON from `vllm-esp profile`, or a built-in name) "
                       "with which the global manager plans each step's new requests: which "
                       "share a ring prefill over which instances, where the others go "
                       "(default: most free KV; spread only prompts that outgrow one instance).")
    group.add_argument("--esp-admission", choices=ADMISSION_CHOICES, default=None,
                       help="Who admits new requests: vllm (each instance's scheduler, the "
                       "default) or manager (the global manager: only while the KV every live "
                       "request holds at max_tokens fits the pool, so decodes are never "
                       "preempted; needs --esp-profile).")
    group.add_argument("--esp-cpu-bind", default=None,
                       help="CPU build: core list per worker, '|'-separated (default: even split).")
    group.add_argument("--esp-instance-backend", choices=INSTANCE_BACKEND_CHOICES, default=None,
                       help="How instances start their workers: mp (processes on this node, the "
                       "default) or ray (Ray actors, one placement group per instance, on any "
                       "node of the Ray cluster at RAY_ADDRESS; needs `pip install ray`).")
    return True


def apply_from_namespace(args: argparse.Namespace) -> dict[str, Any]:
    """EngineArgs field updates for a parsed ``vllm serve`` namespace."""
    esp = {field: getattr(args, opt, None) for opt, field in ESP_OPTIONS.items()}
    return apply(
        getattr(args, "executor", None),
        esp,
        scheduler_cls=getattr(args, "scheduler_cls", None),
        additional_config=getattr(args, "additional_config", None),
        tensor_parallel_size=getattr(args, "tensor_parallel_size", None),
        pipeline_parallel_size=getattr(args, "pipeline_parallel_size", 1),
    )


def apply_to_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``executor``/``esp_*`` from LLM kwargs and return kwargs vLLM understands."""
    kwargs = dict(kwargs)
    executor = kwargs.pop("executor", None)
    esp = {field: kwargs.pop(opt, None) for opt, field in ESP_OPTIONS.items()}
    if executor is None and kwargs.get("distributed_executor_backend") == "esp":
        executor = kwargs.pop("distributed_executor_backend")
    updates = apply(
        executor,
        esp,
        scheduler_cls=kwargs.get("scheduler_cls"),
        additional_config=kwargs.get("additional_config"),
        tensor_parallel_size=kwargs.get("tensor_parallel_size"),
        pipeline_parallel_size=kwargs.get("pipeline_parallel_size", 1),
    )
    kwargs.update(updates)
    return kwargs
