"""Single-process checks of the ops' building blocks: LSE merge, the paged layouts,
stripes, keep-range slots, backend choice, imports without optional packages."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_esp.ops import (
    ESPStepPlan,
    NhdPagedKV,
    RingMember,
    RingPrefill,
    StepTensors,
    masked_attention_with_lse,
    merge_partials,
    select,
)

PROPS = settings(max_examples=12, deadline=None)


def test_merge_of_key_split_equals_attention_over_union():
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 4, 32), torch.randn(20, 2, 32), torch.randn(20, 2, 32)
    full = masked_attention_with_lse(q, k, v, torch.ones(5, 20, dtype=torch.bool), 0.2)
    parts = [masked_attention_with_lse(q, k[a:b], v[a:b], torch.ones(5, b - a, dtype=torch.bool),
                                       0.2) for a, b in ((0, 7), (7, 7), (7, 20))]
    out, lse = merge_partials(torch.stack([p[0] for p in parts]),
                              torch.stack([p[1] for p in parts]))
    torch.testing.assert_close(out, full[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, full[1], atol=1e-6, rtol=0)
    assert torch.isneginf(parts[1][1]).all() and (parts[1][0] == 0).all()


def test_merge_all_empty_gives_zero_and_neg_inf():
    out, lse = merge_partials(torch.randn(3, 2, 2, 8),
                              torch.tensor([float("-inf"), float("inf"), float("-inf")])
                              .view(3, 1, 1).expand(3, 2, 2))
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_flash_layout_is_vllms_flash_attn_cache():
    """vLLM 0.32's FLASH_ATTN cache is ``[num_blocks, Hkv, block_size, 2 * D]``, K in the first
    D of the last dim and V in the second (``FlashAttentionImpl.forward``'s docstring and
    split): token slot s of head h sits at ``[s // bs, h, s % bs]``."""
    from vllm_esp.ops import FlashPagedKV

    layout = FlashPagedKV(2, 8, 16, torch.float32)
    cache = layout.allocate(4)
    assert cache.shape == (4, 2, 16, 16)
    k, v = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    slots = torch.tensor([0, -1, 17, 40, 63])
    layout.write(cache, k, v, slots)
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        torch.testing.assert_close(cache[s // 16, :, s % 16, :8], k[t], rtol=0, atol=0)
        torch.testing.assert_close(cache[s // 16, :, s % 16, 8:], v[t], rtol=0, atol=0)
    assert int((cache != 0).sum()) == 4 * 2 * 16  # slot -1 wrote nothing
    gk, gv = layout.gather(cache, torch.tensor([1, 2]))  # tokens 16..47
    torch.testing.assert_close(gk[1], k[2], rtol=0, atol=0)
    torch.testing.assert_close(gv[40 - 16], v[3], rtol=0, atol=0)


@PROPS
@given(k=st.integers(1, 4), lens=st.lists(st.integers(1, 30), min_size=1, max_size=4),
       data=st.data())
def test_keep_slots_cover_each_kept_token_once(k, lens, data):
    """Every token of a keep range is written exactly once, at its slot, as the shards pass
    (whichever member computed it)."""
    bs, rings, expect = 4, [], {}
    for i, n in enumerate(lens):
        rows = [n // k] * (k - 1) + [n - (n // k) * (k - 1)]
        members = []
        for r in range(k):
            b = data.draw(st.integers(0, n))
            e = data.draw(st.integers(b, n))
            blocks = [100 * r + 10 * i + j for j in range(-(-(e - b) // bs))]
            members.append(RingMember(r, f"r{i}", rows[r], b, e, blocks, []))
            for t in range(b, e):
                expect.setdefault(r, set()).add(blocks[(t - b) // bs] * bs + (t - b) % bs)
        rings.append(RingPrefill(members))
    plan = ESPStepPlan(rings=rings)
    for me in range(k):
        pos = [ring.positions()[me] for ring in rings]
        offs = np.concatenate([[0], np.cumsum([len(p) for p in pos])]).astype(int)
        rows = {f"r{i}": (int(offs[i]), int(offs[i + 1])) for i in range(len(lens))}
        step = StepTensors.build(plan, me, rows, bs, torch.device("cpu"))
        seen = []
        for src, slots in enumerate(step.rings[0].keep_slots):
            assert slots is None or slots.numel() == step.rings[0].shard_rows[src]
            if slots is not None:
                seen += slots[slots >= 0].tolist()
        assert sorted(seen) == sorted(expect.get(me, set()))


def test_dispatch_defaults_and_override(monkeypatch):
    from vllm_esp.ops import CpuPagedKV

    monkeypatch.delenv("VLLM_ESP_OPS_BACKEND", raising=False)
    assert select("cpu", CpuPagedKV(1, 32, 32, torch.float32)).name == "cpu"
    assert select("cpu", override="reference").name == "reference"
    assert select("cpu", NhdPagedKV(1, 8, 16, torch.float32), override="triton").name == "triton"
    with pytest.raises(ValueError):  # the device kernels cannot read vLLM's CPU layout
        select("cpu", CpuPagedKV(1, 32, 32, torch.float32), override="triton")
    with pytest.raises(RuntimeError):
        select("cpu", NhdPagedKV(1, 8, 16, torch.float32), override="flash_attn")
    monkeypatch.setenv("VLLM_ESP_OPS_BACKEND", "nonsense")
    with pytest.raises(ValueError):
        select("cpu")


def test_import_without_optional_packages():
    """Blocking vllm, triton and flash_attn must not break importing ops/comm."""
    code = (
        "import sys\n"
        "for m in ('vllm', 'triton', 'flash_attn'): sys.modules[m] = None\n"
        "import vllm_esp.ops as o, vllm_esp.comm\n"
        "from vllm_esp.ops import triton_kernels, flash_attn_path\n"
        "assert not triton_kernels.AVAILABLE and not flash_attn_path.available()\n"
        "assert o.select('cpu').name == 'cpu'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
