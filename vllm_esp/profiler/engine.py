"""Timer backed by a live engine: stock ``vllm.LLM`` for k=1, the ESP engine for k>1.

Each measurement runs ``generate`` on fresh random token-id prompts (prefix caching is off and
ids differ per repeat, so no cache hit shortens a prefill).
Prefill time is the wall time of a ``max_tokens=1`` request batch (one engine step plus the
engine's per-request overhead, which the fitted ``A`` absorbs). Decode time per iteration is
``(T(1 + steps) − T(1)) / steps`` on prompts of the same shape. Each point keeps the *minimum*
over repeats: on shared cores other processes only ever add time, so the minimum is the best
estimate of the engine's own cost.

k > 1 runs ``vllm_esp.LLM(model, executor="esp", esp_instances=k)`` and asks every request to
be spread over the k instances (``extra_args={"esp_instances": k}``): its prefill runs over all
k at once when they have room, and its decode attends KV held by all k (one master, k-1 peers).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path


def model_kv_bytes_per_token(model_dir: str) -> tuple[int, str]:
    """Bytes of K+V per token over all layers of one replica, and the checkpoint dtype."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    nbytes = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 2)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * nbytes, dtype


def host_copy_bandwidth(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Bytes/s of a large host memory copy: the KV path between instances on one CPU host."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


class EngineTimer:
    def __init__(self, model: str, k: int, repeats: int = 3, max_model_len: int = 4096,
                 max_batched_tokens: int = 16384, max_seqs: int = 64, seed: int = 0, **engine_kw):
        kw = dict(model=model, max_model_len=max_model_len, max_num_batched_tokens=max_batched_tokens,
                  max_num_seqs=max_seqs, enable_prefix_caching=False, seed=seed, **engine_kw)
        if k == 1:
            from vllm import LLM

            self.llm = LLM(**kw)
        else:
            try:
                from vllm_esp import LLM
            except (ImportError, AttributeError) as e:
                raise RuntimeError(f"k={k} needs the ESP engine (vllm_esp.LLM), not available: {e}") from e
            self.llm = LLM(executor="esp", esp_instances=k, **kw)
        self.k = k
        self.repeats = repeats
        self.rng = random.Random(seed)
        self.vocab = self.llm.llm_engine.model_config.get_vocab_size()
        for b, l in ((1, 8), (2, 64), (4, 256), (1, 8)):  # warm-up: lazy init, allocator growth
            self._run(b, l, 4)

    def _prompts(self, batch: int, length: int):
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=[self.rng.randrange(8, self.vocab) for _ in range(length)])
                for _ in range(batch)]

    def _run(self, batch: int, length: int, max_tokens: int) -> float:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                            extra_args={"esp_instances": self.k} if self.k > 1 else None)
        prompts = self._prompts(batch, length)
        t0 = time.perf_counter()
        self.llm.generate(prompts, sp, use_tqdm=False)
        return time.perf_counter() - t0

    def prefill(self, batch: int, length: int) -> float:
        return min(self._run(batch, length, 1) for _ in range(self.repeats))

    def decode(self, batch: int, length: int, steps: int) -> float:
        per_step = []
        for _ in range(self.repeats):
            t1 = self._run(batch, length, 1)
            tn = self._run(batch, length, 1 + steps)
            per_step.append(max(tn - t1, 1e-6) / steps)
        return min(per_step)
