"""A persistent world of spawned worker processes joined by one gloo ESP process group.

Starting processes and importing torch costs seconds, so one world of ``WORLD`` workers is
started lazily per pytest session and reused by every multi-process test (tests/comm and
tests/ops). ``run(fn, args_per_rank)`` calls ``fn(comm, *args)`` on each worker (``args`` None
= that rank sits out) and returns the per-rank results; exceptions are re-raised in the parent
with the worker's traceback. ``fn`` must be a module-level function (it is pickled by name).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import traceback

WORLD = 4
TIMEOUT_S = 90.0

_world = None


def _worker(rank: int, world: int, port: int, conn) -> None:
    import torch

    torch.set_num_threads(1)
    from vllm_esp.comm import ESPCommunicator, init_esp_process_group

    pg = init_esp_process_group("127.0.0.1", port, rank, world, "gloo", timeout_s=60)
    comm = ESPCommunicator(pg, rank)
    try:  # pay vLLM's import (seconds) once per worker, concurrently, not inside a test
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa  # noqa: F401
    except Exception:
        pass
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            break
        fn, args = msg
        try:
            comm.reset_counters()
            res = None if args is None else fn(comm, *args)
            conn.send(("ok", res))
        except BaseException:  # report everything, keep serving
            conn.send(("err", traceback.format_exc()))


class World:
    def __init__(self, size: int = WORLD):
        from vllm_esp.comm import find_free_port

        ctx = mp.get_context("spawn")
        port = find_free_port()
        self.size = size
        self.conns, self.procs = [], []
        for r in range(size):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(r, size, port, b), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        for c in self.conns:
            if not c.poll(4 * TIMEOUT_S) or c.recv() != "ready":
                self.close()
                raise RuntimeError("ESP test world failed to start")

    def run(self, fn, args_per_rank: list):
        assert len(args_per_rank) == self.size
        for c, a in zip(self.conns, args_per_rank):
            c.send((fn, a))
        results, errors = [], []
        for r, c in enumerate(self.conns):
            if not c.poll(TIMEOUT_S):
                self.close()
                raise TimeoutError(f"rank {r} did not answer (deadlock?)")
            status, val = c.recv()
            (errors.append(f"rank {r}:\n{val}") if status == "err" else None)
            results.append(val if status == "ok" else None)
        if errors:
            raise RuntimeError("\n".join(errors))
        return results

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()  # only our own child, by handle
                p.join(timeout=5)
        self.procs, self.conns = [], []


def world() -> World:
    global _world
    if _world is None:
        _world = World()
        atexit.register(_world.close)
    return _world
