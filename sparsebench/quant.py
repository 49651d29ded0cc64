"""INT8 operands for the AVX512-VNNI kernels: per-row s8 weights and per-token u8 activations.

Weights: symmetric per output row, w ~ scale[r] * q with q = clamp(rint(w / scale[r]), -127, 127)
and scale[r] = max |W[r, :]| / 127. Activations: symmetric per column of X (per token),
x ~ scales[n] * (u - 128) with u = clamp(rint(x / scales[n]), -127, 127) + 128 (u8, zero point
128) and by default scales[n] = max |X[:, n]| / 127; or one calibrated scale for every column.
Per token rather than per tensor because transformer activations have tokens with outliers
(on MiniLM one token's FFN input reaches 25 where the median is 0.12): a per-tensor scale
spends the 8 bits of every other token on that one. The kernels accumulate
sum_k q[r, k] * u[k, n] exactly in 32 bits, subtract 128 * sum_k q[r, k] and scale by
scale[r] * scales[n]; K is limited to MAX_K so that the sums can never overflow.
"""
import numpy as np

from ._buildinfo import BUILD
from .arrays import operand
from .blocks import BlockGrid, check_block, check_stackable, padded_blocks
from .bsr import PREFETCH_PAD, _frozen, task_bounds
from .cpu import best_isa, default_threads, encoder_module, kernel_module

#: block shapes with int8 kernels (setup.py)
INT8_BLOCKS = tuple(tuple(b) for b in BUILD["int8_blocks"])
ZERO_POINT = 128
#: largest K: 255 * 128 * K (the largest accumulator magnitude) stays below 2**31
MAX_K = 65536
#: packed layout of X per block shape (kernels/vnni.h) and the multiple N is padded to
LAYOUTS = {(4, 1): "rows", (8, 1): "rows", (16, 1): "rows", (4, 4): "quads", (1, 4): "quads"}
N_PAD = {"rows": 64, "quads": 16}
#: below this many X entries quantize+pack runs on one thread
SERIAL_PACK = 1 << 15
#: the pool's thread limit (kernels/pool.h)
MAX_PACK_THREADS = 256


def check_int8_block(block):
    return check_block(block, INT8_BLOCKS, "no int8 kernels for {} blocks; int8 blocks: {}")


class QuantizedBSRMatrix(BlockGrid):
    """An M x K weight matrix as s8 blocks with one float32 scale per row, for sb.spmm.

    Stored as groups of 4 K values per row, the unit of one vpdpbusd: a 4x4 or 1x4 block is one
    group; the 4x1, 8x1 or 16x1 blocks of a block row are taken 4 at a time (the last group padded with
    zero blocks). Immutable, like BSRMatrix.

    ``QuantizedBSRMatrix(Wq, scales, block)`` takes already quantized weights (W ~ scales[:, None]
    * Wq, Wq an M x K integer matrix in [-128, 127], scales finite and positive) and stores
    the blocks of Wq that have a nonzero entry; from_dense quantizes a float matrix.
    """

    __slots__ = ("_shape", "_block", "_data", "_indices_padded", "_gptr", "_comp", "_scales",
                 "_nnzb", "_tasks", "_plans", "__weakref__")
    dtype = "int8"

    def __init__(self, Wq, scales, block=(4, 1)):
        br, bc = check_int8_block(block)
        Wq = np.asarray(Wq)
        if Wq.ndim != 2 or not np.issubdtype(Wq.dtype, np.integer):
            raise ValueError(f"Wq must be a 2-D integer matrix, got shape {Wq.shape} dtype {Wq.dtype}")
        if Wq.dtype != np.int8 and Wq.size and (Wq.min() < -128 or Wq.max() > 127):
            raise ValueError(f"Wq values must fit int8 [-128, 127], got [{Wq.min()}, {Wq.max()}]")
        M, K = Wq.shape
        if K > MAX_K:
            raise ValueError(f"K={K} is too large for the int8 kernels: their 32-bit accumulators "
                             f"are exact only up to K={MAX_K}")
        scales = np.asarray(scales)
        if scales.shape != (M,) or not np.issubdtype(scales.dtype, np.floating):
            raise ValueError(f"scales must be a float array of shape ({M},), got shape {scales.shape} "
                             f"dtype {scales.dtype}")
        scales = scales.astype(np.float32)
        if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise ValueError("scales must be finite and positive")
        Wq = Wq.astype(np.int8, copy=False)
        blocks = padded_blocks(Wq, (br, bc))                            # (Mb, br, Kb, bc)
        nonzero = np.any(blocks != 0, axis=(1, 3))                      # (Mb, Kb)
        Mb = nonzero.shape[0]
        counts = nonzero.sum(axis=1)
        rows, cols = np.nonzero(nonzero)                                # block row order, then column
        if bc == 4:                     # a block is a group: its rows are the quads
            groups = counts
            data = blocks[rows, :, cols, :]                             # (groups, br, 4)
            idx = cols
            members = 1
        else:                           # 4 blocks of a row make a group, padded with zero blocks
            groups = -(-counts // 4)
            members = 4
            first = np.concatenate(([0], np.cumsum(counts)[:-1]))       # row's first block in `cols`
            row_of = np.repeat(np.arange(Mb), 4 * groups)
            pos = np.arange(row_of.size) - np.repeat(4 * np.cumsum(groups) - 4 * groups, 4 * groups)
            real = pos < counts[row_of]
            src = first[row_of] + np.minimum(pos, counts[row_of] - 1)   # padding repeats the row's last block
            idx = cols[src]
            vals = blocks[row_of, :, idx, 0] * real[:, None]            # (members, br)
            data = vals.reshape(-1, 4, br).transpose(0, 2, 1)           # (groups, br, 4)
        ngroups = int(groups.sum())
        if (ngroups + PREFETCH_PAD) * members >= 2**31:
            raise ValueError(f"too many blocks ({rows.size}) for 32-bit indices")
        padded = np.zeros((ngroups + PREFETCH_PAD) * members, dtype=np.int32)
        padded[:ngroups * members] = idx
        gptr = np.zeros(Mb + 1, dtype=np.int32)
        np.cumsum(groups, out=gptr[1:])
        comp = np.zeros(Mb * br, dtype=np.int32)
        comp[:M] = ZERO_POINT * Wq.sum(axis=1, dtype=np.int32)
        rscale = np.zeros(Mb * br, dtype=np.float32)
        rscale[:M] = scales
        init = object.__setattr__
        init(self, "_shape", (M, K))
        init(self, "_block", (br, bc))
        init(self, "_data", _frozen(np.ascontiguousarray(data, dtype=np.int8)))
        init(self, "_indices_padded", _frozen(padded))
        init(self, "_gptr", _frozen(gptr))
        init(self, "_comp", _frozen(comp))
        init(self, "_scales", _frozen(rscale))
        init(self, "_nnzb", int(rows.size))
        init(self, "_tasks", {})     # (threads, m_tile) -> task bounds
        init(self, "_plans", {})     # KernelConfig -> (module, variant id, packed rows, task bounds); (N, layout) -> default config

    def __setattr__(self, name, value):
        raise AttributeError("QuantizedBSRMatrix is immutable; build a new one (e.g. from_dense)")

    def __reduce__(self):
        return (type(self), (self.to_int8(), self.scales, self._block))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def vstack(cls, parts):
        """The matrices `parts` (the same K and block; every M but the last a whole number of
        block rows) stacked by rows into one, with the same s8 weights and row scales: each output
        row computes what it did in its part."""
        check_stackable(parts)
        first = parts[0]
        return cls(np.vstack([p.to_int8() for p in parts]), np.concatenate([p.scales for p in parts]),
                   first.block)

    def block_rows(self, i0, i1):
        """Block rows [i0, i1) as a QuantizedBSRMatrix that shares this one's groups, indices,
        zero-point corrections and scales (no copy)."""
        br, bc = self._block
        M, K = self._shape
        if not 0 <= i0 <= i1 <= self._gptr.shape[0] - 1:
            raise ValueError(f"block rows {i0}..{i1} are outside 0..{self._gptr.shape[0] - 1}")
        members = 1 if bc == 4 else 4
        g0, g1 = int(self._gptr[i0]), int(self._gptr[i1])
        data = self._data[g0:g1]
        view = object.__new__(type(self))
        init = object.__setattr__
        init(view, "_shape", (min(i1 * br, M) - min(i0 * br, M), K))
        init(view, "_block", self._block)
        init(view, "_data", data)
        init(view, "_indices_padded", self._indices_padded[g0 * members:])   # PREFETCH_PAD groups past g1 at least
        init(view, "_gptr", _frozen(self._gptr[i0:i1 + 1] - g0))
        init(view, "_comp", self._comp[i0 * br:i1 * br])
        init(view, "_scales", self._scales[i0 * br:i1 * br])
        # the stored blocks: every group of a 4x4 or 1x4 block; the nonzero members of the others
        init(view, "_nnzb", int(g1 - g0) if bc == 4 else int(np.any(data != 0, axis=1).sum()))
        init(view, "_tasks", {})
        init(view, "_plans", {})
        return view

    @classmethod
    def from_dense(cls, W, block=(4, 1)):
        """Quantize W (finite, real) per output row to s8 and store its nonzero blocks."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"W must be a 2-D matrix, got shape {W.shape}")
        if not (np.issubdtype(W.dtype, np.floating) or np.issubdtype(W.dtype, np.integer)):
            raise TypeError(f"W must be a real numeric array, got dtype {W.dtype}")
        check_int8_block(block)
        W = W.astype(np.float32, copy=False)
        finite = np.isfinite(W)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise ValueError(f"W[{r}, {c}] = {W[r, c]}: int8 quantization needs finite weights")
        scales = (np.abs(W).max(axis=1, initial=0) / np.float32(127)).astype(np.float32)
        scales[scales == 0] = 1                 # all-zero rows (or underflow): any scale will do
        Wq = np.clip(np.rint(W / scales[:, None]), -127, 127).astype(np.int8)
        return cls(Wq, scales, block)

    # -- properties and conversions ----------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def block(self):
        return self._block

    @property
    def scales(self):
        """Per-row weight scales, float32 (M,)."""
        return self._scales[:self._shape[0]]

    @property
    def nnz_blocks(self):
        """Stored blocks (the zero blocks padding the groups of 4x1, 8x1, 16x1 blocks not counted)."""
        return self._nnzb

    @property
    def nnz(self):
        return self._nnzb * self._block[0] * self._block[1]

    def to_int8(self):
        """The quantized weights as a dense int8 M x K matrix."""
        br, bc = self._block
        M, K = self._shape
        Mb = self._gptr.shape[0] - 1
        groups = np.diff(self._gptr)
        if bc == 4:
            Kq = -(-K // 4)
            out = np.zeros((Mb, br, Kq, 4), dtype=np.int8)
            rows = np.repeat(np.arange(Mb), groups)
            out[rows, :, self._indices_padded[:self._data.shape[0]], :] = self._data
            return out.reshape(Mb * br, Kq * 4)[:M, :K].copy()
        out = np.zeros((Mb, br, K), dtype=np.int32)
        rows = np.repeat(np.arange(Mb), 4 * groups)
        vals = self._data.transpose(0, 2, 1).reshape(-1, br)                 # (members, br)
        np.add.at(out, (rows, slice(None), self._indices_padded[:rows.size]), vals)
        return out.reshape(Mb * br, K)[:M].astype(np.int8)

    def to_dense(self):
        """The dequantized weights, float32 M x K (scales[:, None] * to_int8())."""
        return self.to_int8() * self.scales[:, None]

    def __repr__(self):
        M, K = self._shape
        br, bc = self._block
        return (f"<QuantizedBSRMatrix {M}x{K} int8, block {br}x{bc}, {self._nnzb} blocks, "
                f"density {self.density:.3f}>")

    def task_bounds(self, threads, m_tile):
        """Block-row ranges, one per task: balanced by groups (m_tile=0) or m_tile rows each."""
        key = (threads, m_tile)
        bounds = self._tasks.get(key)
        if bounds is None:
            br = self._block[0]
            bounds = self._tasks[key] = task_bounds(np.diff(self._gptr) * (4 * br) + br, threads, m_tile)
        return bounds


class QuantizedActivations:
    """X (K x N) as u8 = clamp(rint(x / scales[n]), -127, 127) + 128 (a scale per column), packed
    for the int8 kernels of one block shape (kernels/vnni.h: 'rows' for 4x1, 8x1, 16x1 blocks, 'quads' for
    4x4 and 1x4).

    Build it with quantize_activations (from float32) or from_uint8; pass it to sb.spmm in
    place of X to reuse one quantization for several matrices with the same K and layout.
    """

    __slots__ = ("_packed", "_shape", "_layout", "_scales")

    def __init__(self, packed, shape, layout, scales):
        """Internal: use quantize_activations or from_uint8. scales: float32, one per padded column."""
        self._packed = _frozen(packed)
        self._shape = shape
        self._layout = layout
        self._scales = _frozen(scales)

    @classmethod
    def from_uint8(cls, U, scale, block=(4, 1)):
        """From already quantized activations U (K x N uint8; x ~ scale * (U - 128)), `scale`
        one number or one per column."""
        U = np.asarray(U)
        if U.ndim != 2 or U.dtype != np.uint8:
            raise ValueError(f"U must be a 2-D uint8 array, got shape {U.shape} dtype {U.dtype}")
        layout = LAYOUTS[check_int8_block(block)]
        K, N = U.shape
        npad = N_PAD[layout] * -(-N // N_PAD[layout])
        scales = np.ones(npad, np.float32)
        if np.ndim(scale) == 0:
            scales[:N] = _check_scale(scale)
        elif np.shape(scale) == (N,):
            scales[:N] = [_check_scale(s) for s in scale]
        else:
            raise ValueError(f"scale must be a number or one per column ({N}), got shape {np.shape(scale)}")
        Kq = -(-K // 4)
        full = np.full((4 * Kq if layout == "quads" else K, npad), ZERO_POINT, np.uint8)
        full[:K, :N] = U
        if layout == "quads":        # quad-row g: column c at bytes 4c..4c+3 = rows 4g..4g+3
            packed = full.reshape(Kq, 4, npad).transpose(0, 2, 1).reshape(Kq, 4 * npad)
        else:                        # each 64-column chunk in _mm512_packs order (vnni.h)
            packed = full.reshape(K, npad // 64, 4, 4, 4).transpose(0, 1, 3, 2, 4).reshape(K, npad)
        return cls(np.ascontiguousarray(packed), (K, N), layout, scales)

    @property
    def shape(self):
        return self._shape

    @property
    def scales(self):
        """The scale of each column, float32 (N,): x[:, n] ~ scales[n] * (u[:, n] - 128)."""
        return self._scales[:self._shape[1]]

    @property
    def layout(self):
        return self._layout

    def to_uint8(self):
        """The quantized values as a K x N uint8 array (zero point 128)."""
        K, N = self._shape
        P = self._packed
        rows, width = P.shape
        if self._layout == "quads":
            full = P.reshape(rows, width // 4, 4).transpose(0, 2, 1).reshape(4 * rows, width // 4)
        else:
            full = P.reshape(K, width // 64, 4, 4, 4).transpose(0, 1, 3, 2, 4).reshape(K, width)
        return full[:K, :N].copy()

    def to_float(self):
        """The dequantized activations, float32 K x N."""
        return (self.to_uint8().astype(np.float32) - ZERO_POINT) * self.scales

    def __repr__(self):
        K, N = self._shape
        scales = self.scales
        what = f"scales {scales.min():.6g}..{scales.max():.6g}" if N else "no columns"
        return f"<QuantizedActivations {K}x{N} u8, layout {self._layout}, {what}>"


def quantize_activations(X, block=(4, 1), scale=None, threads=None, layout="features"):
    """Quantize float32 X (K x N features x tokens, finite) to u8 and pack it for the int8
    kernels of `block`.

    scale None: dynamic, a scale per token, its largest |x| / 127 (one more pass over X); else
    one calibrated scale for every token, values beyond 127 * scale saturating. layout
    "tokens": X is N x K (PyTorch's activations), packed with no transposed copy into the same
    K x N QuantizedActivations, bit for bit; spmm(..., layout="tokens") takes it.
    """
    if layout not in ("features", "tokens"):
        raise ValueError(f"layout must be 'features' (X is K x N) or 'tokens' (X is N x K), got {layout!r}")
    X = operand(X, "X")
    packing = LAYOUTS[check_int8_block(block)]
    scale = 0.0 if scale is None else _check_scale(scale)
    tokens = layout == "tokens"
    packed, scales = pack(X, packing, scale, threads or default_threads(), tokens)
    return QuantizedActivations(packed, X.shape[::-1] if tokens else X.shape, packing, scales)


def layer_norm_quantized(x, gamma, beta, eps, residual=None, block=(4, 1), threads=None):
    """x <- LayerNorm(x + residual) in place (the encoder ops' kernel; x: features x tokens,
    float32 with contiguous rows) and, in the same pass, its output quantized per token and
    packed for `block`'s int8 kernels: what quantize_activations(x, block) returns afterwards,
    bit for bit, without its two more passes over x. Returns the QuantizedActivations."""
    layout = LAYOUTS[check_int8_block(block)]
    if not (isinstance(x, np.ndarray) and x.ndim == 2):
        raise ValueError(f"x must be a 2-D float32 array (features x tokens), got {type(x).__name__}")
    K, N = x.shape
    packed, both = kernel_module(best_isa("int8"), "int8").packed_arrays(K, N, layout == "quads")
    encoder_module("avx512vnni").add_layer_norm(x, gamma, beta, eps, residual, threads or default_threads(),
                                                packed, both, layout == "quads")
    return QuantizedActivations(packed, (K, N), layout, both[:both.shape[0] // 2])


def pack(X, layout, scale, threads, tokens=False):
    """(packed u8 array, scale per padded column) of a checked float32 X (K x N; tokens: N x K,
    packed as its transpose); scale 0 means max |x| / 127 per token."""
    threads = 1 if X.shape[0] * X.shape[1] < SERIAL_PACK else min(threads, MAX_PACK_THREADS)
    module = kernel_module(best_isa("int8"), "int8")
    return (module.quantize_tokens if tokens else module.quantize)(X, layout == "quads", scale, threads)


def _check_scale(scale):
    """A calibrated scale as a float32 value: finite and at least the smallest normal float32
    (so that 1 / scale is finite)."""
    try:
        s = float(np.float32(scale))
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive number, got {scale!r}") from None
    if not (np.isfinite(s) and s >= np.finfo(np.float32).tiny):
        raise ValueError(f"scale must be finite and at least {np.finfo(np.float32).tiny:.3g} "
                         f"(as float32), got {scale!r}")
    return s
