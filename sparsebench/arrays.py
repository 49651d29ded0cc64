"""The dense float32 operands the kernels read and write: checks, and page-friendly allocation."""
import mmap

import numpy as np
from numpy.lib.stride_tricks import as_strided


_FLOAT32 = np.dtype(np.float32)


def operand(a, name):
    """`a` checked as a 2-D float32 array with contiguous rows (returned with canonical strides)."""
    # the common case first, in few steps (every spmm call checks X and out): a plain ndarray
    # whose dtype is the native float32 singleton, rows contiguous
    if type(a) is np.ndarray and a.dtype is _FLOAT32 and a.ndim == 2:
        row, item = a.strides
        if item == 4 and row >= 4 * a.shape[1] and row % 4 == 0:
            return a
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} must not be a masked array (the kernels would ignore its mask); "
                        f"pass {name}.filled(0) for masked entries as zeros")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}; convert once with "
                        f"np.ascontiguousarray({name}, dtype=np.float32)")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (K x N), got shape {a.shape}")
    rows, cols = a.shape
    if a.strides[1] == 4 and a.strides[0] >= 4 * cols and a.strides[0] % 4 == 0:
        return a
    if a.flags.c_contiguous:
        # length-0 or length-1 axes may carry any stride; give them the canonical one
        return as_strided(a, strides=(4 * cols, 4))
    raise ValueError(f"{name} must have contiguous rows (C order), got strides {a.strides}; "
                     f"use np.ascontiguousarray({name})")


#: arrays at least this large go to huge pages (smaller ones stay with numpy's allocator)
HUGE_PAGE_MIN_BYTES = 256 * 1024
HUGE_PAGE = 2 * 1024 * 1024
CACHE_LINE = 64


def empty(shape, dtype=np.float32):
    """Like np.empty, but large arrays start on a 2 MiB boundary and ask Linux for transparent
    huge pages (madvise), so that they are physically contiguous.

    Use it for the activations the kernels read. With 4 KiB pages an array lands on scattered
    physical pages, some of which compete for the same L2 cache sets; which ones differs from
    one allocation to the next, and so does the kernels' speed: a 1x1 kernel (1024 x 4096 x 128,
    70%, 2 threads) took 3.1 ms on a numpy X and 2.2 ms on the same X on huge pages. Below
    HUGE_PAGE_MIN_BYTES, or where Python has no MADV_HUGEPAGE, it is numpy's memory started on a
    cache line (numpy's own start is only 16-byte aligned: a row of whole lines would straddle
    one more); where the kernel declines huge pages it is still one page-aligned mapping. The
    array is a view: it cannot be resized in place.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or dtype.subdtype is not None or any(s < 0 for s in shape):
        return np.empty(shape, dtype)          # numpy's own handling (and errors)
    if nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        # numpy's allocator aligns to 16 bytes: start on a cache line, so that rows a whole
        # number of lines long are read a line at a time
        raw = np.empty(nbytes + CACHE_LINE, np.uint8)
        start = -raw.ctypes.data % CACHE_LINE
        return raw[start:start + nbytes].view(dtype).reshape(shape)
    # one spare huge page, so a 2 MiB boundary falls inside the mapping
    mapping = _HugePageMap(-1, -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE,
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(mapping, np.uint8)
    start = -raw.ctypes.data % HUGE_PAGE
    try:
        # whole huge pages (inside the spare one): a partial one would never be promoted
        mapping.madvise(mmap.MADV_HUGEPAGE, start, -(-nbytes // HUGE_PAGE) * HUGE_PAGE)
    except OSError:
        pass                                # huge pages off: an ordinary page-aligned mapping
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class _HugePageMap(mmap.mmap):
    """A mapping `empty` made (huge pages asked for), told apart from other memory maps."""


#: numpy asks Linux for huge pages (madvise) for its own allocations of at least this many bytes
NUMPY_HUGE_PAGE_MIN_BYTES = 4 * 1024 * 1024


def on_huge_pages(a):
    """Whether huge pages were asked for the memory of numpy array `a`: a mapping of `empty`, or
    numpy's own allocation of NUMPY_HUGE_PAGE_MIN_BYTES or more (where numpy madvises). False for
    smaller numpy arrays (4 KiB pages) and for other memory (file maps, shared memory, buffers)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    if isinstance(a, memoryview):
        a = a.obj
    if isinstance(a, _HugePageMap):
        return True
    return isinstance(a, np.ndarray) and a.nbytes >= NUMPY_HUGE_PAGE_MIN_BYTES and _numpy_madvises()


def _numpy_madvises():
    try:
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:
        return False
    return bool(_get_madvise_hugepage())



#: a row stride that is a multiple of this many bytes maps the rows a kernel reads together (the
#: same columns of many rows) into a few cache sets: at 1024 float32 columns, 4 KiB rows leave a
#: quarter of a 1 MiB 8-way L2 and one L1 set group usable
ALIASING_STRIDE = 2048


def padded_columns(cols, itemsize=4):
    """The row stride, in items, of an activation array with `cols` columns: `cols`, or one cache
    line more where a row would be a whole multiple of ALIASING_STRIDE bytes."""
    if cols and (cols * itemsize) % ALIASING_STRIDE == 0:
        return cols + CACHE_LINE // itemsize
    return cols


def activations(rows, cols):
    """An empty float32 (rows, cols) array for activations the kernels read or write: on huge
    pages (as empty) and with rows padded apart (padded_columns) where their length would alias
    in the caches. A view with contiguous rows, as every sparsebench op accepts; at 768 x 1024 it
    lets the BERT-Base kernels keep an X panel in L2 (sparse GEMMs and attention 10-25% faster).
    """
    rows, cols = int(rows), int(cols)
    return empty((rows, padded_columns(cols)))[:, :cols]
