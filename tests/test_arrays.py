"""sparsebench.empty: np.empty's contract; large arrays on 2 MiB boundaries and huge pages."""
import gc
import mmap
import re
import weakref

import numpy as np
import pytest

import sparsebench as sb
from sparsebench import arrays
from sparsebench.arrays import HUGE_PAGE, HUGE_PAGE_MIN_BYTES
from conftest import assert_spmm_close, random_pruned, random_x


def _mapping(a):
    """The mmap behind an array from sb.empty."""
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return b.obj


def _huge_kib(a):
    """AnonHugePages of the mapping that holds a's data, from /proc/self/smaps."""
    addr, inside = a.ctypes.data, False
    for line in open("/proc/self/smaps"):
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def _thp_enabled():
    try:
        return "[never]" not in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.parametrize("shape", [(0, 5), (3, 7), (768, 128), (1024, 1000), (3, 100, 1000)])
def test_empty_behaves_like_np_empty(shape):
    a = sb.empty(shape)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    assert np.all(a == 1.5)
    if a.nbytes >= HUGE_PAGE_MIN_BYTES:
        assert a.ctypes.data % HUGE_PAGE == 0


def test_empty_other_dtypes_and_int_shape():
    a = sb.empty(70000, np.int32)
    assert a.shape == (70000,) and a.dtype == np.int32 and a.ctypes.data % HUGE_PAGE == 0
    o = sb.empty(100000, object)                           # numpy's memory: it holds references
    assert o.dtype == object and o.shape == (100000,)


@pytest.mark.skipif(not _thp_enabled(), reason="transparent huge pages are disabled on this machine")
@pytest.mark.parametrize("shape", [(768, 128), (768, 1024)])       # 384 KiB (< 2 MiB) and 3 MiB
def test_empty_arrays_are_on_huge_pages(shape):
    a = sb.empty(shape)
    a[...] = 1.0                                           # touch: the pages are faulted in now
    assert _huge_kib(a) >= 2048, "no huge page backs the array"


def test_on_huge_pages_tells_where_huge_pages_were_asked_for(tmp_path, monkeypatch):
    big = sb.empty((HUGE_PAGE_MIN_BYTES // 4, 2))
    assert arrays.on_huge_pages(big) and arrays.on_huge_pages(big[3:, 1:]) and arrays.on_huge_pages(big.T)
    assert arrays.on_huge_pages(sb.arrays.activations(1024, 1024))
    assert not arrays.on_huge_pages(np.empty((HUGE_PAGE_MIN_BYTES // 4, 2), np.float32))
    assert not arrays.on_huge_pages(sb.empty(16))                       # small: numpy's own
    assert not arrays.on_huge_pages(np.frombuffer(bytearray(64), np.float32))
    mapped = np.memmap(tmp_path / "x.bin", np.float32, "w+", shape=(HUGE_PAGE_MIN_BYTES, 2))
    assert not arrays.on_huge_pages(mapped[:10])                       # a file map: not ours
    numpy_big = np.empty(arrays.NUMPY_HUGE_PAGE_MIN_BYTES // 4, np.float32)[:10]
    assert arrays.on_huge_pages(numpy_big) == arrays._numpy_madvises()
    monkeypatch.setattr(arrays, "_numpy_madvises", lambda: False)
    assert not arrays.on_huge_pages(numpy_big)


def test_empty_memory_is_released_with_the_array():
    a = sb.empty((1024, 1024))
    ref = weakref.ref(_mapping(a))
    del a
    gc.collect()
    assert ref() is None


def test_empty_falls_back_to_numpy_memory_on_a_cache_line_without_madv_hugepage(monkeypatch):
    monkeypatch.delattr(mmap, "MADV_HUGEPAGE")
    a = sb.empty((1024, 1024))
    assert a.shape == (1024, 1024) and a.ctypes.data % 64 == 0


@pytest.mark.parametrize("shape, dtype", [((3,), np.float32), ((64, 64), np.float32), ((100, 7), np.float32),
                                          ((5, 5), np.int8), ((33, 3), np.float64)])
def test_small_arrays_start_on_a_cache_line(shape, dtype):
    """numpy's allocator aligns to 16 bytes: below the huge-page size, empty still starts on a
    cache line, whatever numpy's own start."""
    for _ in range(8):                     # numpy's starts vary from one allocation to the next
        a = sb.empty(shape, dtype)
        a[...] = 1
        assert a.ctypes.data % 64 == 0 and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert not sb.arrays.on_huge_pages(a)


def test_empty_refuses_negative_shapes_and_keeps_subarray_dtypes_as_numpy_does():
    with pytest.raises(ValueError):
        sb.empty((3, -1))
    with pytest.raises(ValueError):
        sb.empty(-1)
    a = sb.empty(4, np.dtype((np.float32, 3)))
    assert a.shape == (4, 3) and a.dtype == np.float32


def test_empty_keeps_the_aligned_mapping_when_madvise_fails(monkeypatch):
    class RefusingMmap(mmap.mmap):
        def madvise(self, *args):
            raise OSError(22, "Invalid argument")
    monkeypatch.setattr(arrays.mmap, "mmap", RefusingMmap)
    a = sb.empty((1024, 1024))
    a[...] = 2.0
    assert a.ctypes.data % HUGE_PAGE == 0 and np.all(a == 2.0)


def test_spmm_reads_x_from_empty():
    W, A = random_pruned(400, 1000, (1, 1), 0.7, seed=2)
    X = sb.empty((1000, 200))
    X[...] = random_x(1000, 200)
    for k_slice in (0, 64):
        cfg = sb.KernelConfig((1, 1), sb.cpu.available_isas()[0], sb.default_config(A, 200).n_tile,
                              k_slice=k_slice, threads=2)
        assert_spmm_close(sb.spmm(A, X, cfg), W, X, context=str(cfg))
