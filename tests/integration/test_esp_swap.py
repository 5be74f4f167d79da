"""KV swap to host memory under ``--executor esp``: every instance's length-aware scheduler has
its own ``SwapConnector`` (scheduler side) and its workers theirs (worker side). With tiny pools
the ALISE policy preempts and swaps; outputs equal stock vLLM's (float32, exact swap)."""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    close_engine,
    engine_core_in_process,
    esp_scheduler,
    generate_once,
    make_engine,
)

PROMPTS = ["Hello world, how are you today? I am fine",
           "The quick brown fox jumps over the lazy dog",
           "One two three four five", "What is the capital of France?",
           "Long context serving needs memory",
           "Speculative scheduling predicts how long each job runs",
           "Paris is the capital of France.", "six seven eight nine ten"] * 2
LENGTHS = [110, 6, 100, 10, 4, 95, 12, 8] * 2  # heavy-tailed mix
BLOCK = 32
SWAP = {"kv_connector": "SwapConnector", "kv_role": "kv_both",
        "kv_connector_module_path": "vllm_esp.scheduling.swap_connector"}


def _params():
    return [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=1,
                           extra_args={"output_len": n}) for n in LENGTHS]


@pytest.fixture(scope="module")
def run(tiny_models):
    # 6 usable blocks per instance: the six long requests need 4 each, 24 > 12
    small = dict(max_model_len=128, block_size=BLOCK, max_num_seqs=4,
                 kv_cache_memory_bytes=7 * BLOCK * 1024)
    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, kv_transfer_config=SWAP, **small,
                          additional_config={"esp": {
                              "instances": 2, "policy": "alise", "predictor": "oracle",
                              "swap": "always", "min_run_steps": 2, "max_wait_s": 30,
                              "aging_rate": 0.0,
                              # lockstep: on their own clocks the scale-up runs at every
                              # instance's step and catches each shortage while the other
                              # instance has a block, so only requests already spread over
                              # both are preempted (recomputed by design), and nothing swaps
                              "lockstep": True}})
    try:
        sched = esp_scheduler(llm)
        # the swap scenario of this test whatever the cross-instance rule (placement and
        # re-routing by predicted work are tested in test_length_aware.py): requests placed
        # by free KV, in turn, three long ones per instance, each instance swapping its own
        sched.length_aware = False
        outs = llm.generate(PROMPTS, _params(), use_tqdm=False)
        stats = [s.stats() for s in sched.instances]
        used = sched.esp_stats()["kv_used_blocks"]
    finally:
        close_engine(llm)
    ref = generate_once(tiny_models["llama"], None, PROMPTS, _params(), max_model_len=128,
                        block_size=BLOCK)
    return {"outs": outs, "ref": ref, "stats": stats, "used": used}


def test_swapped_requests_come_back_with_stock_outputs(run):
    assert [len(o.outputs[0].token_ids) for o in run["outs"]] == LENGTHS
    assert_same_outputs(run["outs"], run["ref"])


def test_preempted_kv_went_to_host_memory_and_came_back(run):
    """Swaps happened and every swapped request was swapped in again. (Requests whose KV was
    spread over both instances by a scale-up are recomputed, as documented.)"""
    out = sum(st.get("swap_out", 0) for st in run["stats"])
    back = sum(st.get("swap_in", 0) for st in run["stats"])
    assert out >= 1 and back == out, run["stats"]
    assert all(st.get("swap_bytes", 0) == 0 for st in run["stats"])  # host memory released
    assert run["used"] == [0, 0]


def test_other_kv_connectors_are_refused(tiny_models):
    with pytest.raises(Exception, match="supports only the SwapConnector"):
        with engine_core_in_process():
            generate_once(tiny_models["llama"], 2, ["x"], SamplingParams(max_tokens=1),
                          kv_transfer_config={"kv_connector": "ExampleConnector",
                                              "kv_role": "kv_both"})
