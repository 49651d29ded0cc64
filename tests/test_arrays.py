"""sparsebench.empty: np.empty's contract, large arrays on 2 MiB boundaries (huge pages)."""
import gc
import weakref

import numpy as np
import pytest

import sparsebench as sb
from sparsebench.arrays import HUGE_PAGE, HUGE_PAGE_MIN_BYTES
from conftest import assert_spmm_close, random_pruned, random_x


@pytest.mark.parametrize("shape", [(0, 5), (3, 7), (768, 128), (1024, 1000), (3, 100, 1000)])
def test_empty_behaves_like_np_empty(shape):
    a = sb.empty(shape)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    assert np.all(a == 1.5)
    if a.nbytes >= HUGE_PAGE_MIN_BYTES:
        assert a.ctypes.data % HUGE_PAGE == 0


def test_empty_other_dtype_and_int_shape():
    a = sb.empty(70000, np.int32)
    assert a.shape == (70000,) and a.dtype == np.int32 and a.ctypes.data % HUGE_PAGE == 0


def test_empty_memory_is_released_with_the_array():
    a = sb.empty((1024, 1024))
    owner = a
    while owner.base is not None and isinstance(owner.base, np.ndarray):
        owner = owner.base
    ref = weakref.ref(owner)
    del a, owner
    gc.collect()
    assert ref() is None


def test_spmm_on_empty_operands_and_default_out_is_page_aligned():
    W, A = random_pruned(400, 1000, (1, 1), 0.7, seed=2)
    X = sb.empty((1000, 200))
    X[...] = random_x(1000, 200)
    Y = sb.spmm(A, X)
    assert Y.nbytes >= HUGE_PAGE_MIN_BYTES and Y.ctypes.data % HUGE_PAGE == 0
    assert_spmm_close(Y, W, X)
