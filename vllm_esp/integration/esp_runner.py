"""The ESP model runner: vLLM's V1 runner, told each step which rows ESP computes.

``ESPRunnerMixin`` is mixed into vLLM's ``GPUModelRunner`` subclasses (the CPU runner here, the
GPU runner in ``esp_gpu_worker``). Per step it opens the ESP step (``esp_step``), records each
request's rows in the forward, loads the stripes of ring members (their rows compute prompt
positions of the whole prompt: token ids and positions from the plan), switches off the stock
K/V write of those rows (their slots become PAD; the ring writes each keep range), and lets an
instance with no forward serve its chunks layer by layer. It also hands a request that is new
to this runner the tokens it produced elsewhere (scale-up) and reserves ESP's transient
memory during vLLM's profile run.

It overrides private V1 runner methods (``_prepare_inputs``, ``_update_states``,
``_determine_batch_execution_and_padding``; ``check_runner_internals`` fails loudly at worker
start when vLLM moves one); what it does to the runner's buffers goes through
``spanning.views``.
"""

from __future__ import annotations

import torch

from vllm_esp.integration import esp_step
from vllm_esp.integration.esp_attention import serve_layer
from vllm_esp.integration.outputs import plan_of
from vllm_esp.integration.spanning import views

# private GPUModelRunner methods the mixin overrides (checked at worker start)
RUNNER_METHODS = ("_prepare_inputs", "execute_model", "_update_states", "profile_run",
                  "_determine_batch_execution_and_padding")


def check_runner_internals(runner_cls) -> None:
    for name in RUNNER_METHODS:
        if not callable(getattr(runner_cls, name, None)):
            raise RuntimeError(f"vLLM moved {runner_cls.__name__}.{name}; the ESP runner "
                               f"needs review")


class ESPRunnerMixin:
    """``esp_layout`` and ``esp_sampler`` say which paged layout the runner's attention
    backend uses and which sampler draws its tokens."""

    esp_layout = None  # staticmethod (kv_cache, head_dim, layer) -> ops.kv_cache layout
    esp_sampler = "cpu"  # how seeded generators advance per step (see _advance_generator)

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        ctx = esp_step.begin_step(plan_of(scheduler_output))
        try:
            out = super().execute_model(scheduler_output, intermediate_tensors)
            if ctx is not None and not scheduler_output.total_num_scheduled_tokens:
                self._serve_without_forward()
            return out
        finally:
            esp_step.end_step()

    def _determine_batch_execution_and_padding(self, *args, **kwargs):
        """A step with span traffic runs without a CUDA graph: the ring and the exchanges are
        host-driven and change every step, so a graph that captured attention (FULL) must not
        replay them. The model stays compiled (its pieces run eagerly); every other step gets
        vLLM's own graph mode."""
        if esp_step.current() is not None:
            kwargs["force_eager"] = True
        return super()._determine_batch_execution_and_padding(*args, **kwargs)

    def profile_run(self, *args, **kwargs):
        """Hold ESP's transient memory while vLLM measures its peak, so that the KV cache
        it sizes afterwards leaves room for it (freed after: the allocator reuses it)."""
        from vllm_esp.ops.workspace import reserve_bytes

        mc = self.model_config
        size = reserve_bytes(self.scheduler_config.max_num_batched_tokens,
                             mc.get_num_attention_heads(self.parallel_config),
                             mc.get_num_kv_heads(self.parallel_config), mc.get_head_size(),
                             self.dtype.itemsize if hasattr(self.dtype, "itemsize") else 4)
        held = torch.empty(size, dtype=torch.uint8, device=self.device)
        held.fill_(0)
        try:
            return super().profile_run(*args, **kwargs)
        finally:
            del held

    def _update_states(self, scheduler_output):
        """A request new to this instance may already have outputs (it continues here after
        a scale-up, or was placed again): hand its runner state those tokens before it joins
        the persistent batch, as vLLM does for a request resumed on the same instance."""
        plan = plan_of(scheduler_output)
        resume = plan.resume_outputs if plan is not None else None
        if not resume:
            return super()._update_states(scheduler_output)
        vocab = self.input_batch.vocab_size

        def add_outputs(req_state):
            tokens = resume.get(req_state.req_id)
            if tokens and not req_state.output_token_ids:
                req_state.output_token_ids.extend(tokens)
                _advance_generator(req_state, len(tokens), vocab, self._fp64_gumbel(),
                                   self.esp_sampler)

        with views.with_added_outputs(self, add_outputs):
            return super()._update_states(scheduler_output)

    def _fp64_gumbel(self) -> bool:
        sampler = getattr(getattr(self, "sampler", None), "topk_topp_sampler", None)
        return bool(getattr(sampler, "use_fp64_gumbel", False))

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        ctx = esp_step.current()
        if ctx is not None:
            ctx.rows = views.forward_rows(self)
            ids = list(ctx.rows)
            ctx.block_size = self.cache_config.block_size
            computed = ctx.plan.computed_here(ctx.instance)
            ctx.esp_requests = [i for i, rid in enumerate(ids) if rid in computed]
            self._load_stripes(ctx)
        return result

    def _load_stripes(self, ctx) -> None:
        """A ring member's rows compute its stripe: its tokens at their global positions,
        and no stock K/V write (the ring writes the member's keep range itself)."""
        for index, ring, r in ctx.plan.rings_of(ctx.instance):
            member = ring.members[r]
            a, b = ctx.rows[member.req_id]
            pos = torch.from_numpy(ctx.ring_positions(index)[r])
            if b - a != len(pos):
                raise RuntimeError(f"ESP ring prefill: {member.req_id} has {b - a} rows, "
                                   f"its stripe {len(pos)} tokens")
            views.load_stripe(self, a, b, pos, member.token_ids)

    def _serve_without_forward(self) -> None:
        """No tokens here this step, but peers need our chunks: walk the attention layers in
        the order the askers' forwards visit them."""
        from vllm.model_executor.models.utils import extract_layer_index

        layers = self.vllm_config.compilation_config.static_forward_context
        names = sorted((n for n, m in layers.items() if hasattr(m, "impl")),
                       key=extract_layer_index)
        esp_step.current().block_size = self.cache_config.block_size
        with torch.no_grad():
            for name in names:
                m = layers[name]
                kv = m.kv_cache[0] if isinstance(m.kv_cache, (list, tuple)) else m.kv_cache
                serve_layer(m, self.esp_layout(kv, m.head_size, m), kv, self.dtype)


def _advance_generator(req_state, num_samples: int, vocab_size: int, fp64_gumbel: bool,
                       sampler: str = "cpu") -> None:
    """A seeded request's generator as it is after ``num_samples`` sampling steps of vLLM's
    sampler. ``cpu`` (``TopKTopPSampler.forward_cpu``): one ``randint`` seed per step and
    request, or one exponential row of ``vocab_size`` when fp64 Gumbel noise is on. ``gpu``
    (``random_sample``, vLLM's PyTorch sampler): one exponential row of ``vocab_size`` per
    step, float32 or float64, on the generator's device. (FlashInfer's sampler draws
    differently; the ESP executor turns it off for spread requests.)"""
    gen = req_state.generator
    if gen is None:
        return
    for _ in range(num_samples):
        if fp64_gumbel or sampler == "gpu":
            dtype = torch.float64 if fp64_gumbel else torch.float32
            torch.empty(vocab_size, dtype=dtype, device=gen.device).exponential_(generator=gen)
        else:
            torch.randint(0, 2**31, (1,), generator=gen, dtype=torch.long)
