"""Loaders for real traces: the standard ShareGPT JSON layout and a plain JSONL trace.

ShareGPT layout (``ShareGPT_V3_unfiltered_cleaned_split.json`` and friends)::

    [{"id": "...", "conversations": [{"from": "human", "value": "..."},
                                     {"from": "gpt", "value": "..."}, ...]}, ...]

Like vLLM's benchmark client, each conversation contributes its first human turn as the prompt
and the reply that follows as the reference output. Lengths need a tokenizer: pass any
``str -> int`` (e.g. ``lambda s: len(hf_tok(s).input_ids)``); the default is the common rule of
thumb of 4 characters per token, good enough for rate planning, not for exact replay.

JSONL trace: one object per line with ``prompt_len``, ``output_len`` and optionally ``arrival``
(seconds). This is also what ``dump_jsonl`` writes, so a generated workload can be replayed
against a real server byte for byte.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from vllm_esp.workloads.types import Request, renumber


def approx_token_len(text: str) -> int:
    """~4 characters per token, at least 1 (a tokenizer-free estimate)."""
    return max(1, len(text) // 4)


def load_sharegpt(
    path: str | Path,
    n: int | None = None,
    seed: int = 0,
    token_len: Callable[[str], int] = approx_token_len,
    min_len: int = 4,
    max_prompt_len: int | None = None,
    max_output_len: int | None = None,
) -> list[Request]:
    """Requests from a ShareGPT JSON file (arrival 0), optionally a seeded sample of ``n``.

    Conversations with fewer than two turns, a first turn not from the human, or a prompt or
    output shorter than ``min_len`` tokens are skipped (vLLM's benchmark prunes the same way).
    """
    data = json.loads(Path(path).read_text())
    out = []
    for conv in data:
        turns = conv.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") not in ("human", "user"):
            continue
        p, o = token_len(turns[0]["value"]), token_len(turns[1]["value"])
        if p < min_len or o < min_len:
            continue
        if (max_prompt_len and p > max_prompt_len) or (max_output_len and o > max_output_len):
            continue
        out.append(Request(len(out), p, o))
    if n is not None and n < len(out):
        out = random.Random(f"sharegpt:{seed}").sample(out, n)
    return renumber(out)


def load_jsonl(path: str | Path) -> list[Request]:
    """Requests from a JSONL trace, sorted by arrival (missing arrivals are 0)."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out.append(Request(len(out), int(obj["prompt_len"]), int(obj["output_len"]),
                               float(obj.get("arrival", 0.0))))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: bad trace line ({e}): {line[:80]!r}") from None
    out.sort(key=lambda r: r.arrival)
    return renumber(out)


def dump_jsonl(requests: list[Request], path: str | Path) -> None:
    """Write ``requests`` as a JSONL trace readable by ``load_jsonl``."""
    with open(path, "w") as f:
        for r in requests:
            f.write(json.dumps({"prompt_len": r.prompt_len, "output_len": r.output_len,
                                "arrival": r.arrival}) + "\n")
