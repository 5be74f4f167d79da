"""ESP instances as Ray actors (``esp_instance_backend="ray"``) on a multi-node Ray cluster.

The cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``): a head node with no CPUs
(where the engine connects) and two worker nodes of one CPU each, all on this machine, at
``RAY_ADDRESS``. So each instance must land on its own node, neither on the engine's: vLLM's
message queues to the workers then go over TCP, as between real machines, and the ESP
communicator links workers on different nodes. Each instance must really be vLLM's
``RayExecutorV2``, a prompt spread over both instances must use the communicator, and the tokens
must equal stock vLLM's.
"""

from __future__ import annotations

import random

import pytest
from vllm import SamplingParams
from vllm.inputs import TokensPrompt

from vllm_esp.testing.compare import assert_same_outputs
from vllm_esp.testing.engines import (
    MiB,
    close_engine,
    engine_core_in_process,
    generate_once,
    make_engine,
)

pytest.importorskip("ray", reason="the ray extra (pip install 'vllm-esp[ray]') is not installed")

POOL = 2 * MiB  # per instance: 1920 tokens of the tiny model's KV (15 blocks)
MAX_LEN = 3584  # a 3000-token prompt outgrows one instance's pool


def _workload():
    rng = random.Random(3)

    def prompt(n):
        return TokensPrompt(prompt_token_ids=[rng.randrange(8, 512) for _ in range(n)])

    prompts = [prompt(3000), prompt(700), prompt(5), prompt(60), prompt(300), prompt(1)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=8, logprobs=2),  # outgrows one pool
        SamplingParams(temperature=1.0, seed=5, max_tokens=8,  # spread by the hint
                       extra_args={"esp_instances": 2}),
        SamplingParams(temperature=0.0, max_tokens=16, logprobs=2),
        SamplingParams(temperature=0.9, top_p=0.9, seed=11, max_tokens=12),
        SamplingParams(temperature=0.0, max_tokens=4),
        SamplingParams(temperature=1.0, seed=2, max_tokens=6),
    ]
    return prompts, params


@pytest.fixture(scope="module")
def cluster(monkeypatch_module):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    monkeypatch_module.setenv("RAY_ADDRESS", c.address)
    yield {"head": c.head_node.node_id, "workers": {n.node_id for n in nodes}}
    c.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def ray_run(tiny_models, cluster):
    prompts, params = _workload()

    def placement(worker):  # nested: pickled by value into the workers
        import os

        import ray
        import torch

        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
        node = ray.get_runtime_context().get_node_id() if in_actor else None
        return node, sorted(os.sched_getaffinity(0)), torch.get_num_threads()

    import ray

    with engine_core_in_process():
        llm = make_engine(tiny_models["llama"], 2, esp_instance_backend="ray",
                          kv_cache_memory_bytes=POOL, max_model_len=MAX_LEN)
        try:
            executor = llm.llm_engine.engine_core.engine_core.model_executor
            run = {
                "out": llm.generate(prompts, params, use_tqdm=False),
                "instance_types": [type(i).__name__ for i in executor.instances],
                "placement": llm.collective_rpc(placement),
                "comm": llm.collective_rpc("esp_comm_calls"),
            }
        finally:
            close_engine(llm)
    run["connected_after_close"] = ray.is_initialized()
    return run


def test_each_instance_is_ray_actors_on_its_own_node(ray_run, cluster):
    assert ray_run["instance_types"] == ["RayExecutorV2", "RayExecutorV2"]
    nodes = {node for node, _, _ in ray_run["placement"]}
    assert nodes == cluster["workers"]  # one per node, none on the head


def test_ray_workers_get_their_instance_cores(ray_run):
    # as vLLM's process executor binds its workers: OpenMP threads on the instance's cores
    # (without it both workers ran 2 threads on both cores, 30-50x slower here)
    from vllm_esp.config import ESPConfig
    from vllm_esp.integration.cpu_binding import per_instance

    cores = [[int(c) for c in b.split(",")] for b in per_instance(ESPConfig(instances=2))]
    assert [(aff, n) for _, aff, n in ray_run["placement"]] == [(c, len(c)) for c in cores]


def test_ray_instances_match_stock(ray_run, tiny_models):
    assert not ray_run["connected_after_close"]  # the engine disconnected from the cluster
    prompts, params = _workload()
    ref = generate_once(tiny_models["llama"], None, prompts, params,
                        kv_cache_memory_bytes=2 * POOL, max_model_len=MAX_LEN)
    assert_same_outputs(ray_run["out"], ref)
    # the spread prompts' attention crossed the actors: partial-attention calls on both ranks
    assert all(c["span_query"] > 0 and c["span_partial"] > 0 for c in ray_run["comm"])


def test_unknown_instance_backend_is_refused():
    from vllm_esp.options import apply_to_kwargs

    with pytest.raises(ValueError, match="--esp-instance-backend must be one of mp, ray"):
        apply_to_kwargs({"executor": "esp", "esp_instance_backend": "slurm"})
