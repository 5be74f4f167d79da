"""Run one vLLM CPU engine over a request list and print JSON results (used by engine tests).

Run as a subprocess (``python -m tests.scheduling.engine_runner spec.json``): vLLM spawns
processes and keeps global state, so each engine configuration gets a fresh interpreter. The
engine core runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the runner can read the
scheduler's counters and switch its policy between phases without restarting the engine.
"""

from __future__ import annotations

import json
import os
import sys


def run(spec: dict) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    from vllm_esp.testing.tiny_model import TinyModelSpec, make_tiny_model

    model = make_tiny_model(spec.get("model_dir"), TinyModelSpec(**spec.get("model", {})))
    kwargs = dict(model=model, dtype="float32", seed=0, enforce_eager=True,
                  max_model_len=spec.get("max_model_len", 1024),
                  max_num_seqs=spec.get("max_num_seqs", 8),
                  max_num_batched_tokens=spec.get("max_num_batched_tokens", 1024),
                  enable_prefix_caching=spec.get("prefix_caching", False))
    if spec.get("num_gpu_blocks"):
        kwargs["num_gpu_blocks_override"] = spec["num_gpu_blocks"]
    if spec.get("block_size"):
        kwargs["block_size"] = spec["block_size"]
    if spec.get("scheduler"):
        kwargs["scheduler_cls"] = "vllm_esp.scheduling.AliseScheduler"
        kwargs["additional_config"] = {"esp": spec["phases"][0].get("esp", {})}
    if spec.get("swap_connector"):
        kwargs["kv_transfer_config"] = {
            "kv_connector": "SwapConnector", "kv_role": "kv_both",
            "kv_connector_module_path": "vllm_esp.scheduling.swap_connector",
            "kv_connector_extra_config": {"quantize": spec.get("quantize", False)}}
    llm = LLM(**kwargs)
    sched = None
    if spec.get("scheduler"):
        sched = llm.llm_engine.engine_core.engine_core.scheduler
    results = []
    for phase in spec["phases"]:
        if sched is not None:
            from vllm_esp.scheduling import SchedulingConfig

            sched.reconfigure(SchedulingConfig.from_dict(phase.get("esp", {})))
        params = [SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], ignore_eos=True,
                                 logprobs=1, extra_args=r.get("extra_args"))
                  for r in spec["requests"]]
        outs = llm.generate([r["prompt"] for r in spec["requests"]], params, use_tqdm=False)
        results.append({
            "tokens": [list(o.outputs[0].token_ids) for o in outs],
            "logprobs": [[next(iter(lp.values())).logprob for lp in o.outputs[0].logprobs]
                         for o in outs],
            "stats": sched.stats() if sched is not None else {},
        })
    return {"phases": results}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = run(spec)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
