"""Offline generation with ESP: vllm_esp.LLM and stock vllm.LLM, same tokens as stock vLLM.

Run it with the project's venv (made by ./setup.sh), from the repository root:

    .venv/bin/python examples/offline_esp.py [MODEL]   # default: a tiny random local model

(or `source .venv/bin/activate` first, then `python examples/offline_esp.py`). It starts two
engines of 2 instances each, one after the other: about a minute on a small CPU machine.
"""

import sys

if __name__ == "__main__":  # vLLM spawns worker processes
    import vllm

    from vllm_esp import LLM
    from vllm_esp.testing.tiny_model import make_tiny_model

    model = sys.argv[1] if len(sys.argv) > 1 else make_tiny_model()
    params = vllm.SamplingParams(temperature=0.0, max_tokens=16)
    prompts = ["Hello world", "Elastic sequence parallelism"]

    llm = LLM(model, executor="esp", esp_instances=2, dtype="float32", enforce_eager=True)
    esp_out = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    del llm

    # With the plugin installed, the stock class accepts the executor name too.
    llm = vllm.LLM(model, distributed_executor_backend="esp", dtype="float32",
                   enforce_eager=True, additional_config={"esp": {"instances": 2}})
    stock_class_out = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    print("vllm_esp.LLM :", esp_out)
    print("vllm.LLM(esp):", stock_class_out)
    assert esp_out == stock_class_out
