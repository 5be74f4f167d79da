"""A slow length predictor (retrieval) run in its own process, so no scheduler step waits for it.

Why a process. The retrieval predictor embeds each prompt with a sentence encoder (10-100 ms of
CPU per prompt) and searches an index. Run on the scheduler's thread it stalls the engine; run
on a thread of the engine process it still does: it competes for the GIL and the cores with the
engine loop, and finished requests waited for it (to learn from their embedding). Measured with
``vllm bench serve`` (random 200/32, 100 prompts): TPOT 171-176 ms and one 2.7-4.8 s step, against
about 8 ms with the online predictor. Here the encoder, the index and the learning all live in a
child process (``predictor.worker``) that runs on CPU time the engine leaves idle, with one
compute thread; the engine side only stages messages, hands them to a sender thread once per
step, and picks up finished predictions: it never blocks.

How a request is ordered meanwhile. ``predict`` (called at arrival) returns at once with a
*provisional* estimate: by default the ``online`` predictor's (prompt-template statistics,
learned in this process from the same finished requests: a dict look-up), or the mean finished
length (``provisional="mean"``). ``submit`` stages the request for the child, ``flush`` (end of
``schedule()``) hands the step's messages to the sender thread; ``poll`` returns
the predictions that have arrived, and the scheduler replaces the provisional estimate. A
request that finishes first is still learned from (``observe`` with its key: the child predicts
it, then learns its length).

If the child dies, a line is logged, ``alive`` turns False and requests keep their provisional
estimates (the engine keeps serving).
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from collections import Counter, deque
from multiprocessing.connection import Connection

from vllm_esp.predictor.base import LengthPredictor, PredictRequest, clip_prediction
from vllm_esp.predictor.online import OnlineStatPredictor

logger = logging.getLogger(__name__)

PROVISIONAL = ("online", "mean")
# Options the engine side consumes; the rest are the wrapped predictor's constructor keywords.
WRAPPER_OPTIONS = ("provisional", "worker_priority", "worker_threads", "start_timeout_s")


def runs_in_background(name: str, options: dict | None = None) -> bool:
    """Whether a scheduler must run predictor ``name`` through a BackgroundPredictor: retrieval,
    and the hint predictor when its fallback is retrieval."""
    options = options or {}
    return name == "retrieval" or (name == "hint" and options.get("fallback") == "retrieval")


def _child_pythonpath() -> str:
    """The engine's import path minus the interpreter's own directories (the child has those):
    the child imports what the engine imports (a worktree, a test's encoder module)."""
    own = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix})
    keep = []
    for p in sys.path:
        p = os.path.realpath(p or os.getcwd())
        if not p.startswith(own) and p not in keep:
            keep.append(p)
    return os.pathsep.join(keep)


class BackgroundPredictor(LengthPredictor):
    """Engine-side proxy of a predictor running in a child process. Never blocks after start-up.

    ``options``: the wrapped predictor's keywords, plus ``provisional`` (online | mean),
    ``worker_priority`` (``"idle"``, the default: Linux SCHED_IDLE, a CFS weight of 3 against a
    normal thread's 1024, so the child runs on CPU time the engine leaves idle and a waking
    engine thread preempts it at once; or an integer
    0-19: that much nicer than the engine), ``worker_threads`` (compute threads of the encoder
    and BLAS, default 1) and ``start_timeout_s`` (default 600: loading the encoder
    and pre-loading a trace file). Start-up waits until the child has built the predictor, so
    bad options fail at start-up with the child's one-line reason (ValueError).
    """

    def __init__(self, name: str, options: dict | None = None, tokenizer: dict | None = None):
        super().__init__()
        options = dict(options or {})
        wrapper = {k: options.pop(k) for k in WRAPPER_OPTIONS if k in options}
        provisional = wrapper.get("provisional", "online")
        priority = wrapper.get("worker_priority", "idle")
        threads = wrapper.get("worker_threads", 1)
        timeout = wrapper.get("start_timeout_s", 600.0)
        if provisional not in PROVISIONAL:
            raise ValueError(f"provisional must be one of {PROVISIONAL}, got {provisional!r}")
        if priority != "idle" and (not isinstance(priority, int) or not 0 <= priority <= 19):
            raise ValueError(f"worker_priority must be 'idle' or an integer in [0, 19], "
                             f"got {priority!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"worker_threads must be an integer >= 1, got {threads!r}")
        self.name = name
        self._provisional = OnlineStatPredictor() if provisional == "online" else None
        self._default = float(options.get("default", 128.0))
        self.stats: Counter = Counter()  # submitted, predicted, failed, busy_ms
        self.info: dict = {}
        self.alive = False
        self._error: str | None = None
        self._closing = False
        self._results: deque = deque()
        self._staged: list = []  # messages of this step, handed to the sender by flush()
        self._ready = threading.Event()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._start(name, options, tokenizer, priority, threads)
        if not self._ready.wait(timeout):
            self.close()
            raise RuntimeError(f"the background {name!r} predictor did not start in {timeout} s")
        if self._error is not None or not self.alive:
            self.close()
            raise ValueError(f"predictor {name!r}: {self._error or 'the process exited'}")

    # -- process and its two pipe threads -------------------------------------------------------
    def _start(self, name, options, tokenizer, priority, threads) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=_child_pythonpath())
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)  # read when numpy / torch load in the child
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_esp.predictor.worker", str(to_child_r),
             str(from_child_w)], pass_fds=(to_child_r, from_child_w), env=env)
        os.close(to_child_r)
        os.close(from_child_w)
        self._tx = Connection(to_child_w, readable=False)
        self._rx = Connection(from_child_r, writable=False)
        self._tx.send(("start", {"name": name, "options": options, "tokenizer": tokenizer,
                                 "priority": priority, "threads": threads}))
        for target, label in ((self._write, "esp-predict-send"), (self._read, "esp-predict-recv")):
            threading.Thread(target=target, name=label, daemon=True).start()

    def _write(self) -> None:
        """Sends flushed messages, all that are waiting in one write (the pipe may be full while
        the child is busy: this thread waits then, never the scheduler)."""
        while True:
            lists = [self._outbox.get()]
            while True:
                try:
                    lists.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            stop = None in lists
            batch = [m for msgs in lists if msgs is not None for m in msgs]
            try:
                if batch:
                    self._tx.send(batch)
            except OSError:
                return
            if stop:
                return

    def _read(self) -> None:
        try:
            while True:
                msg = self._rx.recv()
                if msg[0] == "ready":
                    self.info, self.alive = msg[1], True
                    self._ready.set()
                elif msg[0] == "error":
                    self._error = msg[1]
                    self._ready.set()
                elif msg[0] == "predicted":
                    self._results.extend(msg[1])
                    self.stats["busy_ms"] += int(msg[2] * 1000)
        except (EOFError, OSError):
            pass
        finally:
            was_alive, self.alive = self.alive, False
            self._ready.set()
            if was_alive and not self._closing:
                logger.error("the background %s length predictor exited (code %s); requests "
                             "keep their provisional estimates", self.name, self._proc.poll())

    def close(self) -> None:
        """Stop the child (it also stops by itself when this process exits)."""
        if self._closing:
            return
        self._closing = True
        self._outbox.put([*self._staged, ("stop",)])
        self._staged = []
        self._outbox.put(None)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for conn in (self._tx, self._rx):
            try:
                conn.close()
            except OSError:
                pass

    # -- the predictor interface ----------------------------------------------------------------
    def predict(self, req: PredictRequest) -> float:
        """The provisional estimate, at once (online predictor, or mean finished length)."""
        if self._provisional is not None:
            return self._provisional.predict(req)
        mean = self.history.mean()
        return clip_prediction(mean if mean is not None else self._default, req)

    def submit(self, key: str, req: PredictRequest) -> bool:
        """Stage ``req`` for the real prediction (sent at the next ``flush``); False if the
        child is gone (keep the provisional estimate, nothing will arrive)."""
        if not self.alive:
            return False
        self._staged.append(("predict", key, req))
        self.stats["submitted"] += 1
        return True

    def flush(self) -> None:
        """Hand the staged messages to the sender thread, as one item. The scheduler calls it
        at the end of ``schedule()``: the sender then pickles and writes them while the model
        runs, instead of waking (and taking the GIL) once per arrival."""
        if self._staged and self.alive:
            self._outbox.put(self._staged)
        self._staged = []

    def poll(self) -> list[tuple[str, float | None]]:
        """(key, prediction) pairs that arrived since the last call; None = the predictor
        rejected that request (keep the provisional estimate)."""
        out = []
        while self._results:
            key, value = self._results.popleft()
            self.stats["predicted" if value is not None else "failed"] += 1
            out.append((key, value))
        return out

    def observe(self, req: PredictRequest, output_len: int, key: str | None = None) -> None:
        """Learn a finished request: here (history, provisional estimator) and, with ``key``,
        in the child (which has its prompt and embedding from ``submit``)."""
        super().observe(req, output_len)
        if self._provisional is not None:
            self._provisional.observe(req, output_len)
        if key is not None and self.alive:
            self._staged.append(("observe", key, int(output_len)))

    def forget(self, key: str) -> None:
        """The request ended without a length to learn (aborted): drop it in the child."""
        if self.alive:
            self._staged.append(("forget", key))
