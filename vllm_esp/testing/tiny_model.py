"""Tiny, seeded, random HF checkpoints written at run time (no hub access).

Tests, examples and benchmarks need a real model that vLLM loads through its normal model
classes and weight loader. Nothing may be downloaded, so we write one from a config: a byte-level
BPE tokenizer trained on an embedded text and a few-layer Llama / Qwen2 / Mistral with random
weights. Default init gives nearly flat logits, so greedy picks are near-ties decided by rounding;
weights are scaled up (``weight_scale``) so that golden comparisons test the math, not luck.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

_CORPUS = """
Elastic sequence parallelism lets one request use many model instances during prefill and
keeps its key value cache spread over several instances while it decodes. A scheduler decides
every iteration which requests run, how many instances they use and where the cache lives.
The quick brown fox jumps over the lazy dog. Hello world, how are you today? I am fine, thank
you. What is the capital of France? Paris is the capital of France. One two three four five
six seven eight nine ten. Long context serving needs memory; short requests need low latency.
Speculative scheduling predicts how long each job runs and serves the shortest ones first.
"""

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny test model. Field names follow HF config keys."""

    arch: str = "llama"  # llama | qwen2 | mistral | gemma2
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32  # must be a head size vLLM's CPU attention supports
    vocab_size: int = 512
    max_position_embeddings: int = 8192
    seed: int = 0
    weight_scale: float = 3.0
    dtype: str = "float32"

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def _hf_config(spec: TinyModelSpec, bos_id: int, eos_id: int):
    import transformers

    common = dict(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        torch_dtype=spec.dtype,
    )
    if spec.arch == "llama":
        return transformers.LlamaConfig(head_dim=spec.head_dim, **common)
    if spec.arch == "qwen2":
        if spec.head_dim != spec.hidden_size // spec.num_attention_heads:
            raise ValueError("qwen2 derives head_dim = hidden_size / num_attention_heads")
        return transformers.Qwen2Config(**common)
    if spec.arch == "mistral":
        return transformers.MistralConfig(head_dim=spec.head_dim, sliding_window=None, **common)
    if spec.arch == "gemma2":  # sliding-window and full layers (two KV-cache groups), soft-caps
        common["tie_word_embeddings"] = True  # vLLM's Gemma2 has no separate lm_head
        return transformers.Gemma2Config(head_dim=spec.head_dim, sliding_window=4096,
                                         attn_logit_softcapping=50.0,
                                         final_logit_softcapping=30.0,
                                         query_pre_attn_scalar=spec.head_dim, **common)
    raise ValueError(f"unknown tiny model arch {spec.arch!r}; use llama, qwen2, mistral or "
                     f"gemma2")


def make_tiny_model(path: str | os.PathLike | None = None, spec: TinyModelSpec | None = None) -> str:
    """Write (once) a tiny random checkpoint for ``spec`` and return its directory.

    The directory is reused when it already holds a checkpoint of the same spec, so the many
    processes of a test session share one copy.
    """
    import torch
    import transformers

    spec = spec or TinyModelSpec()
    if path is None:
        root = Path(os.environ.get("VLLM_ESP_CACHE", Path.home() / ".cache" / "vllm_esp"))
        path = root / f"tiny-{spec.arch}-{spec.key()}"
    path = Path(path)
    marker = path / "tiny_spec.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
        return str(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(spec.vocab_size)
    config = _hf_config(spec, tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(spec.seed)
    dtype = getattr(torch, spec.dtype)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(spec.weight_scale)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(spec)))
    tmp.replace(marker)
    return str(path)


if __name__ == "__main__":
    import sys

    print(make_tiny_model(sys.argv[1] if len(sys.argv) > 1 else None))
