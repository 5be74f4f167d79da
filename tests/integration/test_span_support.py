"""Which models' requests may be spread (span_support), without an engine."""

from types import SimpleNamespace

from vllm_esp.integration.span_support import impl_blockers, span_blockers


def _config(cache_dtype="auto", window=None, **hf):
    mc = SimpleNamespace(hf_text_config=SimpleNamespace(**hf), use_mla=False,
                         get_sliding_window=lambda: window, is_encoder_decoder=False,
                         is_hybrid=False)
    return SimpleNamespace(model_config=mc, cache_config=SimpleNamespace(cache_dtype=cache_dtype))


def test_plain_causal_attention_may_be_spread():
    assert span_blockers(_config(model_type="llama")) == []


def test_features_span_attention_lacks_are_named():
    assert span_blockers(_config(window=4096)) == ["sliding-window attention"]
    assert span_blockers(_config(attn_logit_softcapping=50.0)) == \
        ["attention logit soft-capping"]
    assert span_blockers(_config(model_type="gpt_oss")) == ["attention sinks"]
    assert span_blockers(_config(cache_dtype="fp8_e4m3")) == ["the fp8_e4m3 KV cache"]
    groups = SimpleNamespace(kv_cache_groups=[1, 2])
    assert span_blockers(_config(), groups) == ["2 KV-cache groups"]
    mla = _config()
    mla.model_config.use_mla = True
    assert span_blockers(mla) == ["MLA attention"]


def test_impl_check_in_the_worker():
    plain = SimpleNamespace(sliding_window=-1, logits_soft_cap=0, sinks=None,
                            alibi_slopes=None, kv_cache_dtype="auto")
    assert impl_blockers(plain) == []
    gemma = SimpleNamespace(sliding_window=(4095, 0), logits_soft_cap=50.0, sinks=None,
                            alibi_slopes=None, kv_cache_dtype="fp8")
    assert impl_blockers(gemma) == ["sliding window (4095, 0)", "logit soft-capping",
                                    "fp8 KV cache"]
