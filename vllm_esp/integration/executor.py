"""ESPExecutor: N model instances behind one vLLM executor.

Each instance is a stock ``MultiprocExecutor`` (its own worker processes, TP group, model
replica and paged KV cache) built from a deep copy of the engine config; the ESP executor
routes each step's per-instance ``SchedulerOutput`` to its instance and merges the outputs.
All workers with the same TP rank are also linked by one cross-instance process group (gloo on
CPU, NCCL on GPU): the ESP communicator that ring prefill and distributed decode use.

Why instances are whole ``MultiprocExecutor`` s: vLLM's worker lifecycle (spawn, ready
handshake, shared-memory RPC queues, death monitoring, shutdown) is reused as it is, and an
instance is exactly what vLLM already runs for one engine.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from vllm.logger import init_logger
from vllm.utils.network_utils import get_open_port
from vllm.v1.executor.abstract import Executor
from vllm.v1.executor.multiproc_executor import MultiprocExecutor

from vllm_esp import envs, qualnames
from vllm_esp.config import SCHEDULER_QUALNAME, ESPConfig
from vllm_esp.integration import (
    cpu_binding,
    gpu_placement,
    instance_config,
    instance_health,
    ray_instances,
)
from vllm_esp.integration.instance_steps import InstanceSteps
from vllm_esp.integration.outputs import (
    LOST_STEP,
    NOT_DONE,
    ESPSchedulerOutput,
    merge_model_runner_outputs,
    split_grammar_output,
)

logger = init_logger(__name__)

WORKER_EXTENSION = qualnames.WORKER_EXTENSION
# workers whose runner / attention backend serve requests spanning instances
ESP_CPU_WORKER = qualnames.CPU_WORKER
ESP_GPU_WORKER = qualnames.GPU_WORKER


class ESPExecutor(Executor):
    """Starts ``esp.instances`` instances of ``esp.tp`` workers each."""

    supports_pp = False

    def __init__(self, vllm_config):
        from vllm_esp.plugin import ensure_registered

        ensure_registered()  # version guard + patches, also on the plain qualname route
        self.esp = instance_config.check_config(vllm_config)
        sched = vllm_config.scheduler_config
        if sched.scheduler_cls in (None, qualnames.STOCK_SCHEDULER):
            # EngineCore builds the scheduler after the executor: make the default ours.
            sched.scheduler_cls = SCHEDULER_QUALNAME
        if self.esp.instances > 1:
            # One model-runner mode in every process: the engine's per-instance schedulers
            # (built after the executor, in this process) and the workers both run vLLM's V1
            # runner, which the ESP runner extends. Mixed modes corrupt resumed requests.
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        # (max_model_len may reach the sum of the pools: vllm_esp_patches.pooled_capacity)
        super().__init__(vllm_config)

    # ---- start-up -------------------------------------------------------------------
    def _init_executor(self) -> None:
        self.is_failed = False
        self._failure_callback: Callable[[], None] | None = None
        self.health = instance_health.for_config(self.vllm_config, self.esp.instances)
        self._pending: list[Any] | None = None
        self.instances: list[MultiprocExecutor] = []
        self.steps = InstanceSteps(self.instances, self.health, self.esp.lockstep)
        binds = cpu_binding.per_instance(self.esp) if _on_cpu() else [None] * self.esp.instances
        self.placements = None if _on_cpu() or self.esp.instance_backend == "ray" else \
            gpu_placement.place_instances(self.esp.instances, self.esp.tp,
                                          gpu_placement.visible_gpus())
        try:
            if self.esp.instance_backend == "ray":
                ray_instances.check_room(self.esp.num_workers)
            for i in range(self.esp.instances):
                self.instances.append(self._start_instance(i, binds[i]))
            if self.esp.instances > 1:
                self._init_esp_communicator()
        except BaseException:
            self.shutdown()
            raise
        logger.info("ESP executor ready: %s", _describe_instances(self.esp))

    def _start_instance(self, index: int, bind: str | None) -> MultiprocExecutor:
        config = copy.deepcopy(self.vllm_config)
        config.parallel_config.distributed_executor_backend = self.esp.instance_backend
        config.parallel_config.worker_extension_cls = WORKER_EXTENSION
        gpu_env: dict[str, str] = {}
        if _on_cpu() and self.esp.instances > 1:
            config.parallel_config.worker_cls = ESP_CPU_WORKER
        elif self.esp.instances > 1:
            gpu_env = instance_config.fit_gpu_instance(config)
        if self.placements is not None:
            gpu_env.update(instance_config.place_gpu_instance(config, self.placements[index]))
        if _on_cpu() and config.cache_config.kv_cache_memory_bytes is None \
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            gib = float(envs.VLLM_ESP_DEFAULT_CPU_KVCACHE_GIB)
            config.cache_config.kv_cache_memory_bytes = int(gib * (1 << 30))
            if index == 0:
                logger.info("KV cache per CPU worker defaults to %.1f GiB "
                            "(set VLLM_CPU_KVCACHE_SPACE or --kv-cache-memory-bytes)", gib)
        env = {"VLLM_CPU_OMP_THREADS_BIND": bind, **gpu_env,
               # names the workers in log prefixes (vllm_esp_patches.worker_names)
               "VLLM_ESP_INSTANCE": str(index) if self.esp.instances > 1 else None}
        if self.esp.instances > 1:
            env["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # the ESP runner extends V1 (see __init__)
        with contextlib.ExitStack() as stack:
            for key, value in env.items():
                stack.enter_context(_env(key, value))
            if self.esp.instance_backend == "ray":  # the actors get the env in their runtime env
                if _on_cpu():
                    env.update(cpu_binding.omp_env(config, self.esp.tp))
                group = ray_instances.start(config, index, env)
            else:
                group = MultiprocExecutor(config)
        group.register_failure_callback(functools.partial(self._on_instance_failure, index))
        return group

    def _init_esp_communicator(self) -> None:
        """One process group per TP rank, over the equal-rank workers of all instances.

        Instance 0's worker of each TP rank hosts that group's store: on this node for
        process instances, on its own node (its address, a port free there) for Ray ones.
        """
        if self.esp.instance_backend == "ray":
            addresses = [tuple(a) for a in self.instances[0].collective_rpc("esp_store_address")]
        else:
            addresses = [("127.0.0.1", get_open_port()) for _ in range(self.esp.tp)]
        shared = self.placements is not None and any(p.sharing > 1 for p in self.placements)
        transport = "gloo" if shared else "auto"
        futures = [
            inst.collective_rpc("esp_init_communicator",
                                args=(addresses, i, self.esp.instances, transport),
                                non_block=True)
            for i, inst in enumerate(self.instances)
        ]
        used = {t for f in futures for t in f.result()}
        if shared:
            logger.warning("ESP instances share GPUs (%s): NCCL cannot link two ranks on one "
                           "device, so the ESP communicator uses %s",
                           [",".join(p.devices) for p in self.placements], ", ".join(used))

    # ---- the step -------------------------------------------------------------------
    def execute_model(self, scheduler_output, non_block: bool = False):
        if not isinstance(scheduler_output, ESPSchedulerOutput) or not scheduler_output.launch:
            return self._execute_plain(scheduler_output, non_block)
        for i, go in enumerate(scheduler_output.launch):
            if go and self.health.is_alive(i):
                self.steps.launch(i, scheduler_output.per_instance[i],
                                  scheduler_output.grammars[i])

        def collect():
            done = self.steps.collect()
            return merge_model_runner_outputs([done.get(i, NOT_DONE)
                                               for i in range(len(self.instances))])

        return _deferred(collect) if non_block else collect()

    def _execute_plain(self, scheduler_output, non_block: bool):
        """A plain vLLM step (one instance under another scheduler): vLLM's two calls, the
        second from EngineCore through ``sample_tokens``."""
        per_instance = self._split(scheduler_output)
        futures = [self._submit(i, "execute_model", so) for i, so in enumerate(per_instance)]

        def collect():
            results = [self._result(i, f) for i, f in enumerate(futures)]
            if any(r is None for r in results):
                self._pending = results  # sampling follows in sample_tokens()
                return None
            return merge_model_runner_outputs(results)

        return _deferred(collect) if non_block else collect()

    def sample_tokens(self, grammar_output, non_block: bool = False):
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("sample_tokens() without a pending execute_model()")
        per_instance = self._last_split
        grammars = split_grammar_output(grammar_output, per_instance)
        futures = [self._submit(i, "sample_tokens", g) if r is None else None
                   for i, (g, r) in enumerate(zip(grammars, pending))]

        def collect():
            outs = [self._result(i, f) if f is not None else r
                    for i, (f, r) in enumerate(zip(futures, pending))]
            return merge_model_runner_outputs(outs)

        return _deferred(collect) if non_block else collect()

    def _submit(self, index: int, method: str, arg):
        """One instance's part of a step (none for a dead instance)."""
        if not self.health.is_alive(index):
            return None
        try:
            return getattr(self.instances[index], method)(arg, non_block=True)
        except Exception:  # noqa: BLE001 - it died between the check and the call
            if self.health.is_alive(index):
                raise
            return None

    def _result(self, index: int, future):
        """One instance's output of the step. An instance that died, or whose step failed
        because a peer died in the middle of a span exchange, reports ``LOST_STEP``: the
        scheduler recomputes what that step was computing."""
        if future is None:
            return LOST_STEP
        try:
            return future.result()
        except Exception:
            time.sleep(0.2)  # let vLLM's monitor notice a dead worker first
            if self.health.num_alive == self.esp.instances:
                raise  # nobody died: a real error
            logger.warning("ESP instance %d lost its step (an instance died during it); its "
                           "requests are recomputed", index)
            return LOST_STEP

    def _split(self, scheduler_output) -> list:
        if isinstance(scheduler_output, ESPSchedulerOutput):
            per_instance = scheduler_output.per_instance
        elif self.esp.instances == 1:
            per_instance = [scheduler_output]
        else:
            raise TypeError(
                f"ESPExecutor with {self.esp.instances} instances needs the ESP scheduler "
                f"({SCHEDULER_QUALNAME}); got a plain SchedulerOutput"
            )
        self._last_split = per_instance
        return per_instance

    # ---- everything else goes to every instance ---------------------------------------
    def collective_rpc(self, method, timeout=None, args=(), kwargs=None,
                       non_block: bool = False, unique_reply_rank: int | None = None, **_):
        """Broadcast to all instances; results concatenated in instance order.

        With ``unique_reply_rank`` the caller wants one answer: instance 0's.
        """
        self.steps.drain()  # one caller per instance's queues at a time
        futures = [inst.collective_rpc(method, timeout=timeout, args=args, kwargs=kwargs,
                                       non_block=True, unique_reply_rank=unique_reply_rank)
                   for i, inst in enumerate(self.instances) if self.health.is_alive(i)]

        def collect():
            results = [f.result() for f in futures]
            if unique_reply_rank is not None:
                return results[0]
            return [x for r in results for x in r]

        return _deferred(collect) if non_block else collect()

    def get_kv_cache_specs(self):
        # Instances are identical replicas: the engine sizes one instance's workers.
        return self.instances[0].get_kv_cache_specs()

    def determine_available_memory(self) -> list[int]:
        per_instance = [inst.determine_available_memory() for inst in self.instances]
        return [min(column) for column in zip(*per_instance)]

    def initialize_from_config(self, kv_cache_configs) -> None:
        # Every instance gets the same per-rank configs: one pool of that size per instance.
        _in_parallel([lambda i=i: i.initialize_from_config(copy.deepcopy(kv_cache_configs))
                      for i in self.instances])

    def compile_or_warm_up_model(self) -> None:
        _in_parallel([inst.compile_or_warm_up_model for inst in self.instances])

    def take_draft_token_ids(self):
        return None  # speculative decoding is refused at start-up

    def check_health(self) -> None:
        """Healthy while one instance lives (degraded with fewer: see instance_health)."""
        if self.health.num_alive == 0:
            raise RuntimeError("every ESP instance has failed")
        for i, inst in enumerate(self.instances):
            if self.health.is_alive(i):
                inst.check_health()

    def register_failure_callback(self, callback) -> None:
        if self.is_failed:
            callback()
        else:
            self._failure_callback = callback

    def _on_instance_failure(self, index: int) -> None:
        """One instance's worker died; vLLM stopped that instance's other workers. The engine
        keeps serving on the others; only the loss of the last one fails it."""
        if not self.health.mark_dead(index):
            return
        alive = self.health.num_alive
        logger.error("ESP instance %d failed; serving on %d of %d instances", index, alive,
                     self.esp.instances)
        if alive:
            return
        self.is_failed = True
        threading.Thread(target=self.shutdown, daemon=True).start()
        callback, self._failure_callback = self._failure_callback, None
        if callback is not None:
            callback()

    def shutdown(self) -> None:
        """Stop every instance at once (each waits for its workers; serially that adds up)."""
        instances = getattr(self, "instances", [])
        for inst in instances:  # signal all workers first, then wait
            for w in getattr(inst, "workers", None) or []:
                if w.death_writer is not None:
                    w.death_writer.close()
                    w.death_writer = None
        _in_parallel([inst.shutdown for inst in instances], swallow=True)
        if getattr(self, "steps", None) is not None:
            self.steps.shutdown()
        if getattr(self, "esp", None) is not None and self.esp.instance_backend == "ray":
            ray_instances.stop()
        if getattr(self, "vllm_config", None) is not None:
            instance_health.forget(self.vllm_config)

    @classmethod
    def supports_async_scheduling(cls) -> bool:
        return False


def _describe_instances(esp: ESPConfig) -> str:
    """"2 instances x TP 1 (2 workers)"; one instance is said to be one (the default)."""
    if esp.instances == 1:
        return (f"1 instance x TP {esp.tp} (--executor esp without --esp-instances N runs "
                "one instance: no request spans instances)")
    return f"{esp.instances} instances x TP {esp.tp} ({esp.num_workers} workers)"


def _in_parallel(calls: list[Callable[[], Any]], swallow: bool = False) -> None:
    """Run blocking per-instance calls concurrently; re-raise the first error."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            if swallow:
                logger.exception("error in an ESP instance call")

    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors and not swallow:
        raise errors[0]


def _deferred(fn: Callable[[], Any]) -> Future:
    """A Future resolved by running ``fn`` when the result is asked for.

    The instances' own futures already run concurrently; collecting them lazily keeps
    EngineCore's overlap of ``execute_model`` with grammar-bitmask computation.
    """

    class _Lazy(Future):
        def result(self, timeout=None):
            if not self.done():
                try:
                    self.set_result(fn())
                except BaseException as e:
                    self.set_exception(e)
            return super().result(timeout)

    return _Lazy()


class _env:
    """Temporarily set (or leave alone, for None) one environment variable."""

    def __init__(self, key: str, value: str | None):
        self.key, self.value = key, value

    def __enter__(self):
        self.old = os.environ.get(self.key)
        if self.value is not None:
            os.environ[self.key] = self.value

    def __exit__(self, *exc):
        if self.value is None:
            return
        if self.old is None:
            os.environ.pop(self.key, None)
        else:
            os.environ[self.key] = self.old


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()
