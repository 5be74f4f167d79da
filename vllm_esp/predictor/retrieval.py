"""Retrieval predictor (ALISE §4): similar past prompts had similar output lengths.

The prompt is embedded by a sentence encoder; the ``k`` nearest finished requests (cosine
similarity) whose similarity is at least ``min_similarity`` vote with weights
``exp(sim / temperature)`` and the prediction is the weighted average of their output lengths.
When nothing is close enough the learned fallback (a small MLP from embedding to log length) is
used once it has seen ``mlp_min_samples`` examples, else the mean of everything seen.

The index grows online (``observe``) and can be pre-loaded from a trace file of past requests
(JSON lines with ``prompt`` and ``output_len``) so a fresh server starts warm. It holds at most
``max_index`` prompts (then the oldest are overwritten), which bounds the search.

This class is synchronous (the simulator and tests call it directly). A scheduler runs it in a
separate process through ``predictor.background.BackgroundPredictor``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from vllm_esp.predictor.base import LengthPredictor, PredictRequest, clip_prediction
from vllm_esp.predictor.encoder import make_encoder
from vllm_esp.predictor.mlp import OnlineMLP


def load_trace(path: str | Path) -> list[tuple[str, int]]:
    """(prompt, output_len) pairs from a JSONL file (``output_len`` or ``output_tokens``)."""
    pairs = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                length = row.get("output_len", row.get("output_tokens"))
                pairs.append((str(row["prompt"]), int(length)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object with 'prompt' and 'output_len'"
                ) from e
    return pairs


class RetrievalPredictor(LengthPredictor):
    name = "retrieval"
    needs_text = True
    # A sentence encoder costs 10-100 ms of CPU per prompt: a scheduler never calls this class
    # on its step path but runs it in a separate process (predictor.background).
    background = True

    def __init__(
        self,
        encoder="auto",
        k: int = 8,
        min_similarity: float = 0.4,
        temperature: float = 0.1,
        max_index: int = 100_000,
        mlp_min_samples: int = 32,
        default: float = 128.0,
        trace_file: str | None = None,
        cache_size: int = 4096,
        query_chunk: int = 64,
    ):
        super().__init__()
        if k < 1 or not -1.0 <= min_similarity <= 1.0 or temperature <= 0 or max_index < 1:
            raise ValueError(
                f"RetrievalPredictor needs k >= 1, -1 <= min_similarity <= 1, temperature > 0,"
                f" max_index >= 1; got {k}, {min_similarity}, {temperature}, {max_index}"
            )
        self.encoder = make_encoder(encoder) if isinstance(encoder, str) else encoder
        self.k, self.min_similarity, self.temperature = k, min_similarity, temperature
        self.max_index, self.mlp_min_samples, self.default = max_index, mlp_min_samples, default
        self.query_chunk = max(int(query_chunk), 1)
        rows = min(64, max_index)  # grows by doubling up to max_index
        self._emb = np.zeros((rows, self.encoder.dim), np.float32)
        self._len = np.zeros(rows, np.float32)
        self._n = 0  # rows filled; once max_index is reached, rows are overwritten round-robin
        self._writes = 0
        self.mlp = OnlineMLP(self.encoder.dim)
        self.fallback_used = 0  # how many predictions came from the fallback (a diagnostic)
        self.cache_size = max(int(cache_size), 0)
        self._cache: dict[str, np.ndarray] = {}  # prompt text -> embedding (insertion order)
        self.encoded = 0  # texts actually run through the encoder (a diagnostic)
        if trace_file:
            self.preload(load_trace(trace_file))

    # -- index -----------------------------------------------------------------------------
    def _text(self, req: PredictRequest) -> str:
        if req.prompt_text is not None:
            return req.prompt_text
        return " ".join(map(str, req.prompt_token_ids))  # still a usable surface key

    def embed(self, req: PredictRequest) -> np.ndarray:
        emb = req.memo.get("embedding")
        if emb is None:
            self.embed_many([req])
            emb = req.memo["embedding"]
        return emb

    def embed_many(self, reqs) -> None:
        """Embed every request not embedded yet, in one encoder call (a batch of prompts costs
        a fraction of one call per prompt); identical prompt texts are encoded once and kept
        in a bounded cache (templated traffic repeats prompts)."""
        todo: dict[str, list[PredictRequest]] = {}
        for req in reqs:
            if "embedding" in req.memo:
                continue
            text = self._text(req)
            cached = self._cache.get(text)
            if cached is not None:
                req.memo["embedding"] = cached
            else:
                todo.setdefault(text, []).append(req)
        if not todo:
            return
        texts = list(todo)
        for text, emb in zip(texts, self.encoder.encode(texts)):
            if self.cache_size:
                if len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)))  # oldest first
                self._cache[text] = emb
            for req in todo[text]:
                req.memo["embedding"] = emb
        self.encoded += len(texts)

    def _add(self, emb: np.ndarray, length: int) -> None:
        if self._n < self.max_index:
            if self._n == len(self._len):
                grow = min(2 * len(self._len), self.max_index)
                self._emb = np.resize(self._emb, (grow, self._emb.shape[1]))
                self._len = np.resize(self._len, grow)
            slot = self._n
            self._n += 1
        else:
            slot = self._writes % self.max_index
        self._writes += 1
        self._emb[slot], self._len[slot] = emb, length
        self.mlp.observe(emb, math.log(max(length, 1)))

    def preload(self, pairs: list[tuple[str, int]], batch: int = 64) -> None:
        for i in range(0, len(pairs), batch):
            chunk = pairs[i : i + batch]
            embs = self.encoder.encode([p for p, _ in chunk])
            for emb, (_, length) in zip(embs, chunk):
                self.history.add(int(length))
                self._add(emb, int(length))

    def __len__(self) -> int:
        return self._n

    # -- predictor API -----------------------------------------------------------------------
    def predict(self, req: PredictRequest) -> float:
        return self.predict_many([req])[0]

    def predict_many(self, reqs) -> list[float]:
        """Embed the batch in one encoder call, then search the index with one matrix product
        per ``query_chunk`` prompts. The search is bounded: O(stored x dim) per prompt, stored
        <= ``max_index`` (at the default 100,000 x 384: about 40 M multiply-adds, a few ms)."""
        reqs = list(reqs)
        self.embed_many(reqs)
        out: list[float] = []
        for i in range(0, len(reqs), self.query_chunk):
            chunk = reqs[i:i + self.query_chunk]
            embs = np.stack([r.memo["embedding"] for r in chunk]).astype(np.float32, copy=False)
            sims = self._emb[: self._n] @ embs.T if self._n else None  # (stored, chunk)
            for j, req in enumerate(chunk):
                value = self._vote(sims[:, j]) if sims is not None else None
                out.append(clip_prediction(value, req) if value is not None
                           else self._fallback(embs[j], req))
        return out

    def _vote(self, sims: np.ndarray) -> float | None:
        """Similarity-weighted mean length of the k nearest stored prompts above the threshold
        (None when none is close enough)."""
        k = min(self.k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[sims[top] >= self.min_similarity]
        if not len(top):
            return None
        w = np.exp((sims[top] - sims[top].max()) / self.temperature)
        return float((w * self._len[top]).sum() / w.sum())

    def _fallback(self, emb: np.ndarray, req: PredictRequest) -> float:
        self.fallback_used += 1
        if self.mlp.n_seen >= self.mlp_min_samples:
            return clip_prediction(math.exp(float(self.mlp.predict(emb[None])[0])), req)
        mean = self.history.mean()
        return clip_prediction(mean if mean is not None else self.default, req)

    def observe(self, req: PredictRequest, output_len: int) -> None:
        super().observe(req, output_len)
        self._add(self.embed(req), int(output_len))
