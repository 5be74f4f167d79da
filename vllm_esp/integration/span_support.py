"""Can this model's requests be spread over instances correctly? (Never silently wrong.)

ESP's span attention implements plain causal softmax attention: full layers, one KV cache
group, the cache in the model's dtype. A model whose attention has anything else (sliding
windows, logit soft-capping, attention sinks, ALiBi, MLA, an fp8 KV cache, several KV-cache
groups, cross attention) is served *unspread*: every request runs whole on one instance, as
stock vLLM runs it; the instances still share one scheduler and endpoint, and the pooled
``max_model_len`` falls back to one instance's pool. ``span_blockers`` says why, from the
config (engine side); ``impl_blockers`` checks the attention impl itself in the worker, so a
feature the config check missed stops the engine loudly instead of computing wrong attention.
"""

from __future__ import annotations

__all__ = ["span_blockers", "impl_blockers", "request_blockers"]


def span_blockers(vllm_config, kv_cache_config=None) -> list[str]:
    """Reasons (plain words) why requests of this engine must not be spread; [] if none."""
    mc, cc = vllm_config.model_config, vllm_config.cache_config
    hf = mc.hf_text_config
    reasons = []
    if _flag(mc, "use_mla"):
        reasons.append("MLA attention")
    if mc.get_sliding_window() or getattr(hf, "sliding_window", None) or \
            "sliding_attention" in (getattr(hf, "layer_types", None) or ()):
        reasons.append("sliding-window attention")
    for name in ("attn_logit_softcapping", "logit_softcapping"):
        if getattr(hf, name, None):
            reasons.append("attention logit soft-capping")
            break
    if getattr(hf, "model_type", "") in ("gpt_oss",) or getattr(hf, "attention_sinks", None):
        reasons.append("attention sinks")
    if getattr(hf, "alibi", False) or getattr(hf, "position_embedding_type", "") == "alibi":
        reasons.append("ALiBi")
    if str(cc.cache_dtype).startswith("fp8"):
        reasons.append(f"the {cc.cache_dtype} KV cache")
    if _flag(mc, "is_encoder_decoder"):
        reasons.append("encoder-decoder (cross) attention")
    if _flag(mc, "is_hybrid"):
        reasons.append("a hybrid (non-attention) model")
    if kv_cache_config is not None and len(kv_cache_config.kv_cache_groups) > 1:
        reasons.append(f"{len(kv_cache_config.kv_cache_groups)} KV-cache groups")
    return reasons


def impl_blockers(impl) -> list[str]:
    """The attention features of one vLLM attention impl that span attention lacks."""
    reasons = []
    window = getattr(impl, "sliding_window", None)
    if window not in (None, -1, (-1, -1), [-1, -1]):
        reasons.append(f"sliding window {window}")
    if getattr(impl, "logits_soft_cap", None):
        reasons.append("logit soft-capping")
    if getattr(impl, "sinks", None) is not None:
        reasons.append("attention sinks")
    if getattr(impl, "alibi_slopes", None) is not None:
        reasons.append("ALiBi")
    if str(getattr(impl, "kv_cache_dtype", "auto")).startswith("fp8"):
        reasons.append("fp8 KV cache")
    return reasons


def _flag(obj, name: str) -> bool:
    value = getattr(obj, name, False)
    return bool(value() if callable(value) else value)


def request_blockers(request) -> list[str]:
    """What of one request the spreading cannot reproduce: such a request runs whole on one
    instance (and is refused, with this reason, when it does not fit one)."""
    reasons = []
    params = request.sampling_params
    if params is not None and params.prompt_logprobs is not None:
        reasons.append("prompt_logprobs")  # the earlier chunks' rows are on other instances
    if getattr(request, "lora_request", None) is not None:
        reasons.append("a LoRA adapter")  # the helper views would run the base weights
    if getattr(request, "mm_features", None):
        reasons.append("multimodal inputs")
    if getattr(request, "prompt_embeds", None) is not None:
        reasons.append("prompt embeddings")
    if getattr(request, "use_structured_output", False):
        reasons.append("structured output")
    return reasons
