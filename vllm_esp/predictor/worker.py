"""The background prediction process: runs a slow predictor (retrieval) beside the engine.

``BackgroundPredictor`` starts it as ``python -m vllm_esp.predictor.worker RFD WFD``. It reads
pickled messages from the pipe RFD and writes to WFD (``multiprocessing.connection`` framing);
its stdout and stderr are the engine's, for logs. Protocol:

    engine -> here: ("start", spec) once, then lists of
        ("predict", key, PredictRequest)   the prompt text is decoded here (tokenizer in spec)
        ("observe", key, output_len)       learn from the finished request ``key``
        ("forget", key)                    the request ended without a usable length
        ("stop",)
    here -> engine: ("ready", info) or ("error", one line), then
        ("predicted", [(key, value or None), ...], seconds spent)

Everything that arrived since the last batch is predicted in one ``predict_many`` call (one
encoder call, one index search). Observations are applied in arrival order, except that one of a
request predicted in the same batch waits for that prediction: no request is predicted from its
own length. The process runs at a lower CPU priority (``priority``: SCHED_IDLE by default) with
``threads`` compute threads, so it takes only CPU time the engine leaves idle instead of slowing
engine steps. It exits on "stop" or when the engine's end of the pipe
closes (the engine exited, however it exited).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from multiprocessing.connection import Connection

from vllm_esp.predictor import make_predictor

logger = logging.getLogger("vllm_esp.predictor.worker")


def _needs_text(predictor) -> bool:
    inner = getattr(predictor, "fallback", None)  # the hint predictor wraps another one
    return bool(getattr(predictor, "needs_text", False) or getattr(inner, "needs_text", False))


def _load_tokenizer(spec: dict | None):
    """vLLM's tokenizer of the served model (so the text is the one the user sent), or None:
    the predictor then embeds the token ids written out as text (a usable surface key)."""
    if not spec:
        return None
    try:
        from vllm.tokenizers import get_tokenizer

        spec = dict(spec)
        return get_tokenizer(spec.pop("name"), **spec)
    except Exception as e:  # noqa: BLE001 - any failure leaves a working predictor
        logger.warning("no tokenizer for the length predictor (%s): embedding token ids", e)
        return None


def _lower_priority(priority) -> None:
    """``"idle"``: SCHED_IDLE (CFS weight 3 against a normal thread's 1024: the child runs on CPU
    time the engine leaves idle, and a waking engine thread preempts it at once); an integer: the niceness to run at. Linux applies both per
    thread, so every thread present is set (threads created later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            if priority == "idle" and hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                level = 19 if priority == "idle" else int(priority)
                if os.getpriority(os.PRIO_PROCESS, tid) < level:
                    os.setpriority(os.PRIO_PROCESS, tid, level)
        except OSError as e:
            logger.warning("could not lower the predictor's CPU priority (%s)", e)
            return


def _limit_torch_threads(threads: int) -> None:
    if "torch" in sys.modules:  # the encoder imported it
        sys.modules["torch"].set_num_threads(threads)


def _predict(predictor, preqs: list) -> list:
    """Predictions of a batch; a request the predictor rejects gets None (the engine keeps its
    provisional estimate), without losing the others."""
    try:
        return list(predictor.predict_many(preqs))
    except Exception as e:  # noqa: BLE001
        logger.warning("batched length prediction failed (%s); one by one", e)
    out = []
    for p in preqs:
        try:
            out.append(predictor.predict(p))
        except Exception as e:  # noqa: BLE001
            logger.warning("length prediction failed (%s); provisional estimate kept", e)
            out.append(None)
    return out


def serve(rx: Connection, tx: Connection, predictor, tokenizer) -> None:
    """The message loop (see the module docstring). ``live`` holds the requests predicted and
    not yet observed or forgotten, with their embeddings, so learning never re-encodes."""
    live: dict = {}
    while True:
        try:
            msgs = list(rx.recv())
            while rx.poll():
                msgs += rx.recv()
        except (EOFError, OSError):
            return
        todo, later = {}, []
        for msg in msgs:
            if msg[0] == "stop":
                return
            if msg[0] == "predict":
                key, preq = msg[1], msg[2]
                if tokenizer is not None and preq.prompt_text is None:
                    preq.prompt_text = tokenizer.decode(list(preq.prompt_token_ids))
                live[key] = todo[key] = preq
            elif msg[0] == "observe" and msg[1] in todo:
                later.append((msg[1], msg[2]))  # predict it first, then learn its length
            elif msg[0] == "observe":
                _learn(predictor, live, msg[1], msg[2])  # in order: later requests use it
            elif msg[0] == "forget":
                live.pop(msg[1], None)
                todo.pop(msg[1], None)
        if todo:
            t0 = time.perf_counter()
            values = _predict(predictor, list(todo.values()))
            try:
                tx.send(("predicted", list(zip(todo, values)), time.perf_counter() - t0))
            except OSError:  # the engine is gone
                return
        for key, output_len in later:
            _learn(predictor, live, key, output_len)


def _learn(predictor, live: dict, key, output_len: int) -> None:
    preq = live.pop(key, None)
    if preq is None:
        return
    try:
        predictor.observe(preq, output_len)
    except Exception as e:  # noqa: BLE001
        logger.warning("learning from request %s failed (%s)", key, e)


def main(argv: list[str]) -> int:
    rx = Connection(int(argv[1]), writable=False)
    tx = Connection(int(argv[2]), readable=False)
    try:
        _, spec = rx.recv()
    except (EOFError, OSError):
        return 1
    try:
        # Built at the engine's priority: the engine waits for it at start-up, while it is not
        # serving (loading the encoder and pre-loading a trace file is most of the work).
        predictor = make_predictor(spec["name"], **spec["options"])
        tokenizer = _load_tokenizer(spec.get("tokenizer")) if _needs_text(predictor) else None
        _limit_torch_threads(spec.get("threads", 1))
        priority = spec["priority"]
        if priority != "idle":  # that much nicer than the engine
            priority = min(os.getpriority(os.PRIO_PROCESS, 0) + int(priority), 19)
        _lower_priority(priority)  # every thread, including those the encoder started
    except Exception as e:  # noqa: BLE001 - reported to the engine, which raises it
        tx.send(("error", f"{type(e).__name__}: {e}"))
        return 1
    encoder = getattr(predictor, "encoder", getattr(getattr(predictor, "fallback", None),
                                                    "encoder", None))
    tx.send(("ready", {"predictor": predictor.name, "encoder": getattr(encoder, "name", None),
                       "pid": os.getpid(), "tokenizer": tokenizer is not None}))
    serve(rx, tx, predictor, tokenizer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
