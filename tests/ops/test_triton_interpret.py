"""The Triton backend vs the dense oracle, on the CPU under TRITON_INTERPRET=1.

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


@pytest.mark.parametrize("sizes", [[[40, 40], [9, 9]],  # equal stripes
                                   [[30, 20, 11], [0, 0, 5]]])  # weighted, empty members
@pytest.mark.parametrize("gqa,d", [(1, 64), (4, 80), (8, 128)])
def test_ragged_kernel_fp32(interp, sizes, gqa, d):
    assert interp.submit(C.check_ragged, sizes, gqa, d, torch.float32, 1e-4).result()


@pytest.mark.parametrize("layout", ["nhd", "flash"])
@pytest.mark.parametrize("gqa,d", [(1, 64), (4, 80), (8, 128)])
def test_paged_kernel_fp32(interp, layout, gqa, d):
    assert interp.submit(C.check_paged, layout, gqa, d, torch.float32, 1e-4).result()


def test_paged_kernel_split_along_keys(interp):
    assert interp.submit(C.check_paged, "flash", 4, 64, torch.float32, 1e-4, 64).result()


def test_kernels_bf16(interp):
    assert interp.submit(C.check_ragged, [[20, 13]], 4, 64, torch.bfloat16, 2e-2).result()
    assert interp.submit(C.check_paged, "flash", 4, 64, torch.bfloat16, 2e-2).result()


# bf16: outputs are rounded to bf16 (1 ulp at |x|~2 is 1.6e-2), so allow 2e-2.
@pytest.mark.parametrize("n,t,h,d,dtype,atol", [
    (1, 3, 2, 64, torch.float32, 1e-6),
    (4, 5, 3, 128, torch.float32, 1e-6),
    (3, 4, 2, 80, torch.bfloat16, 2e-2),
])
def test_merge_kernel(interp, n, t, h, d, dtype, atol):
    assert interp.submit(C.check_merge, n, t, h, d, dtype, atol).result()
