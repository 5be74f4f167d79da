"""ESP worker side: a worker whose model runner and attention backend know the step's ESP
plan (``worker_cls``; installed by the ESP executor when it runs more than one instance).

``ESPRunnerMixin`` is the runner logic, shared by the CPU runner here and the GPU runner in
``esp_gpu_worker`` (both subclass vLLM's V1 ``GPUModelRunner``). Everything here touches
private vLLM 0.32 internals (``CPUWorker.init_device`` building the runner,
``GPUModelRunner._prepare_inputs`` filling ``query_start_loc`` in ``input_batch`` order,
``CPUAttentionBackendImpl.forward``, ``Attention.kv_cache``); they are kept in these two
modules and ``check_internals`` fails loudly when vLLM moves them.
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker

from vllm_esp.integration import span_attention as sa
from vllm_esp.integration.span_plan import PLAN_ATTR
from vllm_esp.ops.kv_cache import CpuPagedKV

BACKEND_QUALNAME = "vllm_esp.integration.esp_worker.ESPCPUAttentionBackend"


def check_internals(*extra: tuple[type, str]) -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for owner, name in ((GPUModelRunner, "_prepare_inputs"), (GPUModelRunner, "execute_model"),
                        (GPUModelRunner, "_update_states"), *extra):
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(f"vLLM moved {owner.__name__}.{name}; ESP worker needs review")


def cpu_layout(kv_cache: torch.Tensor, head_dim: int, layer) -> CpuPagedKV:
    """The CPU_ATTN layout of ``kv_cache [num_blocks, Hkv, block_size, 2 * D]``."""
    return CpuPagedKV(kv_cache.shape[1], head_dim, kv_cache.shape[2], kv_cache.dtype,
                      isa=getattr(layer, "isa", None))


def esp_attention(impl, layout_of, layer, query, key, value, kv_cache, attn_metadata,
                  output) -> None:
    """After the stock kernel: ring prefill and span attention overwrite the rows of spanning
    requests (the stock kernel's K/V writes for ring rows are overwritten too: every slot of
    a keep range gets its true token's K/V as the shards pass). ``layout_of(kv_cache,
    head_dim, layer)`` gives the backend's paged layout."""
    ctx = sa.current()
    if ctx is None or attn_metadata is None:
        return
    n = attn_metadata.num_actual_tokens
    q = query[:n].view(n, impl.num_heads, impl.head_size)
    o = output[:n].view(n, impl.num_heads, impl.head_size)
    layout = layout_of(kv_cache, impl.head_size, layer)
    if ctx.plan.rings:
        sa.ring_layer(ctx, kv_cache, layout, q,
                      key[:n].reshape(n, impl.num_kv_heads, impl.head_size),
                      value[:n].reshape(n, impl.num_kv_heads, impl.head_size), o, impl.scale)
    sa.span_layer(ctx, kv_cache, layout, impl.num_heads, impl.scale, query=q, output=o)


class ESPAttentionMixin:
    """Mixed into a vLLM attention impl: the stock kernel, then ``esp_attention`` over the
    backend's paged layout ``esp_layout``."""

    esp_layout = staticmethod(cpu_layout)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                              output_scale, output_block_scale)
        esp_attention(self, self.esp_layout, layer, query, key, value, kv_cache,
                      attn_metadata, output)
        return out


class ESPCPUAttentionImpl(ESPAttentionMixin, CPUAttentionBackendImpl):
    """Stock CPU attention, then ``esp_attention``."""


class ESPCPUAttentionBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return ESPCPUAttentionImpl


class ESPRunnerMixin:
    """Sets the step's ESP context, records each request's rows, serves peers when idle.
    Mixed into a vLLM V1 ``GPUModelRunner`` subclass; ``esp_layout`` and ``esp_sampler``
    say which paged layout its attention backend uses and which sampler draws its tokens."""

    esp_layout = staticmethod(cpu_layout)
    esp_sampler = "cpu"  # how seeded generators advance per step (see _advance_generator)

    def execute_model(self, scheduler_output, intermediate_tensors=None):
        ctx = sa.begin_step(getattr(scheduler_output, PLAN_ATTR, None))
        try:
            out = super().execute_model(scheduler_output, intermediate_tensors)
            if ctx is not None and not scheduler_output.total_num_scheduled_tokens:
                self._serve_without_forward(ctx)
            return out
        finally:
            sa.end_step()

    def _update_states(self, scheduler_output):
        """A request new to this instance may already have outputs (it continues here after
        a scale-up, or was placed again): hand its runner state those tokens before it joins
        the persistent batch, as vLLM does for a request resumed on the same instance."""
        plan = getattr(scheduler_output, PLAN_ATTR, None)
        resume = plan.resume_outputs if plan is not None else None
        if not resume:
            return super()._update_states(scheduler_output)
        batch = self.input_batch
        add_request = batch.add_request

        def add_with_outputs(req_state):
            tokens = resume.get(req_state.req_id)
            if tokens and not req_state.output_token_ids:
                req_state.output_token_ids.extend(tokens)
                _advance_generator(req_state, len(tokens), batch.vocab_size, self._fp64_gumbel(),
                                   self.esp_sampler)
            return add_request(req_state)

        batch.add_request = add_with_outputs
        try:
            return super()._update_states(scheduler_output)
        finally:
            del batch.add_request

    def _fp64_gumbel(self) -> bool:
        sampler = getattr(getattr(self, "sampler", None), "topk_topp_sampler", None)
        return bool(getattr(sampler, "use_fp64_gumbel", False))

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        result = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        ctx = sa.current()
        if ctx is not None:
            qsl = self.query_start_loc.np
            for i, rid in enumerate(self.input_batch.req_ids[: self.input_batch.num_reqs]):
                ctx.rows[rid] = (int(qsl[i]), int(qsl[i + 1]))
            self._load_stripes(ctx)
        return result

    def _load_stripes(self, ctx) -> None:
        """A ring member's rows compute its stripe: its tokens at their global positions
        (the scheduler laid out the chunk's rows; the slot mapping stays the chunk's)."""
        for index, ring, r in ctx.plan.rings_of(ctx.instance):
            member = ring.members[r]
            a, b = ctx.rows[member.req_id]
            pos = ctx.ring_positions(index)[r]
            if b - a != len(pos):
                raise RuntimeError(f"ESP ring prefill: {member.req_id} has {b - a} rows, "
                                   f"its stripe {len(pos)} tokens")
            self.positions[a:b] = pos
            ids = torch.tensor(member.token_ids, dtype=self.input_ids.cpu.dtype)
            self.input_ids.cpu[a:b] = ids
            if self.input_ids.gpu.data_ptr() != self.input_ids.cpu.data_ptr():
                self.input_ids.gpu[a:b] = ids

    def _serve_without_forward(self, ctx) -> None:
        """No tokens here this step, but peers need our chunks: walk the attention layers in
        the order the askers' forwards visit them."""
        from vllm.model_executor.models.utils import extract_layer_index

        layers = self.vllm_config.compilation_config.static_forward_context
        names = sorted((n for n, m in layers.items() if hasattr(m, "impl")),
                       key=extract_layer_index)
        with torch.no_grad():
            for name in names:
                m = layers[name]
                kv = m.kv_cache[0] if isinstance(m.kv_cache, (list, tuple)) else m.kv_cache
                sa.span_layer(ctx, kv, self.esp_layout(kv, m.head_size, m), m.num_heads,
                              m.impl.scale, dtype=self.dtype)


def _advance_generator(req_state, num_samples: int, vocab_size: int, fp64_gumbel: bool,
                       sampler: str = "cpu") -> None:
    """A seeded request's generator as it is after ``num_samples`` sampling steps of vLLM's
    sampler. ``cpu`` (``TopKTopPSampler.forward_cpu``): one ``randint`` seed per step and
    request, or one exponential row of ``vocab_size`` when fp64 Gumbel noise is on. ``gpu``
    (``random_sample``, vLLM's PyTorch sampler): one exponential row of ``vocab_size`` per
    step, float32 or float64, on the generator's device. (FlashInfer's sampler draws
    differently; the ESP executor turns it off.)"""
    gen = req_state.generator
    if gen is None:
        return
    for _ in range(num_samples):
        if fp64_gumbel or sampler == "gpu":
            dtype = torch.float64 if fp64_gumbel else torch.float32
            torch.empty(vocab_size, dtype=dtype, device=gen.device).exponential_(generator=gen)
        else:
            torch.randint(0, 2**31, (1,), generator=gen, dtype=torch.long)


class ESPCPUModelRunner(ESPRunnerMixin, CPUModelRunner):
    pass


class ESPWorkerMixin:
    """Mixed into a vLLM worker: registers the ESP attention backend in place of the stock
    one (``esp_backend``, an ``AttentionBackendEnum`` name) before the worker starts, then
    turns the stock runner (``esp_stock_runner``, checked) into the ESP one."""

    esp_backend: str
    esp_backend_qualname: str
    esp_stock_runner: type
    esp_runner: type
    esp_runner_name: str  # how the error names the runner ESP needs
    esp_internals: tuple[tuple[type, str], ...]  # checked on top of ``check_internals``'s

    def __init__(self, *args, **kwargs):
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

        check_internals(*self.esp_internals)
        register_backend(AttentionBackendEnum[self.esp_backend], self.esp_backend_qualname)
        super().__init__(*args, **kwargs)

    def init_device(self):
        super().init_device()
        if type(self.model_runner) is not self.esp_stock_runner:
            raise RuntimeError(f"ESP needs {self.esp_runner_name}, got "
                               f"{type(self.model_runner).__name__}")
        self.model_runner.__class__ = self.esp_runner


class ESPCPUWorker(ESPWorkerMixin, CPUWorker):
    esp_backend = "CPU_ATTN"
    esp_backend_qualname = BACKEND_QUALNAME
    esp_stock_runner = CPUModelRunner
    esp_runner = ESPCPUModelRunner
    esp_runner_name = "vLLM's V1 CPU model runner"
    esp_internals = ((CPUAttentionBackendImpl, "forward"), (CPUWorker, "init_device"))
