"""Triton kernels vs the torch references, on the CPU under TRITON_INTERPRET=1.

The interpreter flag must be set before Triton decorates the kernels, and vLLM (imported by
other tests in this process) disables Triton on CPU, so the checks run in a spawned child
whose environment has the flag. Shapes are small: the interpreter is slow.
"""

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

pytest.importorskip("triton")

from tests.ops import _triton_checks as C  # noqa: E402


@pytest.fixture(scope="module")
def interp():
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        ex = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        assert ex.submit(C.interpreter_on).result(timeout=120)  # child started with the flag
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("lens,hq,hkv,d,bs", [
    ([0, 1, 16, 17, 50], 4, 2, 64, 16),   # empty request, block edges
    ([5, 33], 8, 1, 128, 32),             # MQA, head_dim 128
    ([7], 6, 6, 80, 16),                  # non-power-of-two head_dim, MHA
])
def test_paged_attention_kernel_fp32(interp, lens, hq, hkv, d, bs):
    assert interp.submit(C.check_paged, lens, hq, hkv, d, bs, torch.float32, 1e-5).result()


def test_paged_attention_kernel_bf16(interp):
    assert interp.submit(C.check_paged, [3, 20], 4, 2, 64, 16, torch.bfloat16, 2e-2).result()


# bf16: outputs are rounded to bf16 (1 ulp at |x|~2 is 1.6e-2), so allow 2e-2.
@pytest.mark.parametrize("n,t,h,d,dtype,atol", [
    (1, 3, 2, 64, torch.float32, 1e-6),
    (4, 5, 3, 128, torch.float32, 1e-6),
    (3, 4, 2, 80, torch.bfloat16, 2e-2),
])
def test_merge_kernel(interp, n, t, h, d, dtype, atol):
    assert interp.submit(C.check_merge, n, t, h, d, dtype, atol).result()


def test_decode_through_triton_backends(interp):
    assert interp.submit(C.check_decode_with_triton_backends).result()
