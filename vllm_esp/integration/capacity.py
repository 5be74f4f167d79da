"""The start-up line that states what the pooled KV cache of the ESP instances holds.

vLLM logs one instance's capacity ("CPU KV cache size: 65,536 tokens, Maximum concurrency for
2,048 tokens per request: 0.57x"): under ESP that line reads as if long requests did not fit,
while a request may spread over every instance's pool. This line gives the pooled numbers,
and says so when ``--executor esp`` runs a single instance (the default).
"""

from __future__ import annotations


def pool_summary(instance_tokens: list[int], tp: int, max_model_len: int) -> str:
    """One log line; ``instance_tokens[i]`` = tokens instance i's KV pool holds."""
    total = sum(instance_tokens)
    concurrency = total / max_model_len if max_model_len else 0.0
    tail = (f"maximum concurrency for {max_model_len:,} tokens per request: "
            f"{concurrency:.2f}x")
    n = len(instance_tokens)
    if n == 1:
        return (f"ESP KV pool: 1 instance x TP {tp}, {total:,} tokens; {tail} "
                "(--executor esp without --esp-instances N runs one instance)")
    if len(set(instance_tokens)) == 1:
        sizes = f"{n} instances x {instance_tokens[0]:,} tokens"
    else:
        sizes = " + ".join(f"{t:,}" for t in instance_tokens) + " tokens"
    return (f"ESP KV pool: {sizes} = {total:,} tokens pooled (TP {tp}); a request of up to "
            f"max_model_len {max_model_len:,} tokens spreads over instances when it outgrows "
            f"one; {tail} over the pool (vLLM's 'Maximum concurrency' line counts one "
            f"instance)")
