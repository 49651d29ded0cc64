"""Y = W @ X for a block-sparse W: argument checks, then the compiled kernel."""
import threading

import numpy as np

from .arrays import empty as _empty, on_huge_pages, operand as _operand, padded_columns
from .bsr import BSRMatrix
from .config import KernelConfig, check_config, variant_id
from .cpu import best_isa, encoder_module, kernel_module
from .dispatch import default_config
from .quant import LAYOUTS, QuantizedActivations, QuantizedBSRMatrix, pack


ACTIVATIONS = {None: 0, "gelu": 1}
#: how X and Y are laid out: features x tokens (the kernels' own), or tokens x features (PyTorch's)
LAYOUTS_OF_X = ("features", "tokens")


def spmm(A, X, config=None, out=None, bias=None, activation=None, layout="features"):
    """Return Y = act(A @ X (+ bias[:, None])) with A a BSRMatrix (M x K), X a K x N float32 array.

    layout "tokens": X is N x K and Y (and `out`) N x M, token-major as PyTorch keeps
    activations; the kernels store their tiles into `out` transposed. float32 X is transposed
    on the pool first, or, with the config's n_panel (panel_tasks), each task transposes its
    own panel of at most n_panel tokens (panel_width); blocks of one vector of outputs with a
    tile of one vector have a direct kernel that reads X as it is (reads_tokens). int8
    quantizes and packs X from token-major, 64 tokens a task. No copies by the caller. The int8 QuantizedActivations
    of quantize_activations(X, block, layout="tokens") serve any number of calls with the
    same X: the layout then only says how Y is stored.

    X must be float32 with contiguous rows (C order; a column slice of a C array is fine).
    float64 or Fortran-ordered X is refused rather than silently copied: convert it once
    with ``np.ascontiguousarray(X, dtype=np.float32)``. `out`, if given, must be a writeable
    M x N float32 array with contiguous rows, not overlapping X or bias; it is overwritten.
    `config` None picks default_config(A, N, layout=layout). Structurally zero blocks are never multiplied,
    so NaN/inf in X reach only the outputs of stored blocks (as with scipy.sparse and MKL).
    `activation` "gelu" applies the exact (erf) GELU of BERT in the kernel's epilogue
    (|error| < 5e-7 against float64 erf).

    With A a QuantizedBSRMatrix (int8, needs AVX512-VNNI), X is quantized per column to u8
    (quantize_activations with the config's threads) unless it is already a
    QuantizedActivations packed for A's block shape; Y is float32, dequantized in the kernel.
    """
    int8 = isinstance(A, QuantizedBSRMatrix)
    if not (int8 or isinstance(A, BSRMatrix)):
        raise TypeError(f"A must be a sparsebench.BSRMatrix or QuantizedBSRMatrix, got "
                        f"{type(A).__name__}; build one with BSRMatrix.from_dense(W, block=...)")
    if config is not None and not isinstance(config, KernelConfig):
        raise TypeError(f"config must be a KernelConfig or None, got {type(config).__name__}; "
                        "use KernelConfig.from_dict(...) for a dict")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
    if layout not in LAYOUTS_OF_X:
        raise ValueError(f"layout must be 'features' (X is K x N) or 'tokens' (X is N x K), got {layout!r}")
    if layout == "tokens":
        return _token_major(A, X, config, out, bias, activation)
    if int8 and isinstance(X, QuantizedActivations):
        _check_packing(A, X)
    else:
        X = _operand(X, "X")
    M, K = A.shape
    if X.shape[0] != K:
        raise ValueError(f"shape mismatch: A is {M}x{K} but X has {X.shape[0]} rows (needs {K})")
    N = X.shape[1]
    _check_bias(bias, M)
    out, y = _output(out, (M, N), X, bias)
    return _multiply(A, X, config, out, y, bias, activation)


def spmm_into(A, X, config, out, bias=None, activation=None, accumulate=False):
    """spmm(A, X, config, out=out, bias=bias, activation=activation) for the encoder's own arrays
    (Workspace), known good: X float32 K x N with contiguous rows (or QuantizedActivations), out
    a writeable M x N one apart from X and bias, bias None or (M,) float32, config a planned
    KernelConfig. spmm's Python checks are skipped but for X's shape (3.7 of the 6.8 us a
    64x64x8 call took, four calls a layer). The kernel modules still check types, sizes and
    strides before they release the GIL, so arrays the encoder never passes cannot crash: they
    get a ValueError (or, padded to whole blocks, a converted copy); an `out` overlapping X or
    bias is not noticed. accumulate: out += A @ X (+ bias) instead, no activation (the
    encoder's residual add, in the kernel's store step)."""
    if accumulate and activation is not None:
        raise ValueError("spmm_into: accumulate takes no activation")
    if isinstance(X, QuantizedActivations):
        _check_packing(A, X)
    if X.shape[0] != A.shape[1] or X.shape[1] != out.shape[1]:    # packed X no longer shows its N
        raise ValueError(f"spmm_into: X has shape {X.shape}, needs ({A.shape[1]}, {out.shape[1]})")
    return _multiply(A, X, config, out, out, bias, activation, accumulate=accumulate)


def _packed_rows(A):
    """The rows of packed X that A's int8 kernels read: X rows (rows layout) or quad-rows."""
    K = A.shape[1]
    return K if LAYOUTS[A.block] == "rows" else -(-K // 4)


def _multiply(A, X, config, out, y, bias, activation, yt=None, xt=None, accumulate=False):
    """The checked call: plan (once per matrix and config), then the kernel. y: out's canonical
    view (None for int8 with yt); yt: a token-major N x M array the kernels store Y into,
    transposed; xt: token-major X (N x K), and X then xt.T (for its shape). float32: the direct
    kernel reads xt where reads_tokens says so, the panel tasks transpose their tokens into a
    scratch where panel_tasks says so, else X is transposed into one on the pool first; int8
    quantizes and packs straight from xt. accumulate: y += the product (feature-major only)."""
    int8 = isinstance(A, QuantizedBSRMatrix)
    M, K = A.shape
    N = X.shape[1]
    if config is None:
        layout = "features" if yt is None else "tokens"
        config = A._plans.get((N, layout))      # the default for this N, chosen once per matrix
        if config is None:
            config = A._plans[N, layout] = default_config(A, N, layout=layout)
    plan = A._plans.get(config)
    if plan is None:
        check_config(config, A)
        # the kernel, its arrays (int8: the rows of packed X it reads) and the task split, looked
        # up once per (matrix, config)
        arrays = (_packed_rows(A),) if int8 else A._slice_plan(config.k_slice)
        plan = A._plans[config] = (variant_id(config, dense=not int8 and A.is_dense) + arrays
                                   + (A.task_bounds(config.threads, config.m_tile),)
                                   + (() if int8 else (_token_path(A, config),)))
    if M == 0 or N == 0:
        return out
    if int8:
        module, vid, krows, bounds = plan
        if isinstance(X, QuantizedActivations):
            packed, xscales = X._packed, X._scales
        else:                                         # from token-major X with no transposed copy
            packed, xscales = pack(X if xt is None else xt, LAYOUTS[A.block], 0.0, config.threads,
                                   tokens=xt is not None)
        module.run(vid, A._data, A._indices_padded, A._gptr, bounds, A._comp, A._scales, packed, xscales, y, M,
                   krows, config.prefetch, config.threads, bias, ACTIVATIONS[activation], yt, accumulate)
        return out
    if K == 0:
        # no products: every column is act(bias), or 0, with the kernels' own GELU
        column = np.zeros(M, np.float32) if bias is None else bias.copy()
        if activation == "gelu":
            encoder_module().gelu_(column, config.threads)
        if accumulate:
            y += column[:, None]
            return out
        y[...] = column[:, None]
        if yt is not None:
            yt[...] = column[None, :]
        return out
    module, vid, nslices, data, indices, ptr, bounds, token_path = plan
    bc = A.block[1]
    if xt is not None and token_path is DIRECT:
        module.run_direct(data, indices, ptr, bounds, xt, yt, M, K, config.threads, bias, ACTIVATIONS[activation])
        return out
    panel = panel_width(config, N) if xt is not None and token_path is PANELS else 0
    if panel:
        # each panel of tokens gets its own K rows of the scratch, panel_ld floats apart
        ld = module.panel_ld(panel)
        X = _buffer("x", -(-N // panel) * K, ld, ld)
        module.run(vid, data, indices, ptr, bounds, X, y, M, panel, config.prefetch, config.threads, K,
                   bias, ACTIVATIONS[activation], nslices, yt, xt)
        return out
    if xt is not None:
        Xf = _buffer("x", K, N)
        kernel_module(best_isa()).transpose(xt, Xf, config.threads)    # the whole X, first
        X = Xf
    if stages(A, X):
        Xs = _buffer("stage", K, N)
        module.copy_rows(X, Xs, config.threads)
        X = Xs
    if K % bc:
        # the last block column reads whole blocks of X rows: give it zero rows past K
        Xp = _buffer("pad", K + bc - K % bc, N)
        Xp[:K] = X
        Xp[K:] = 0
        X = Xp
    module.run(vid, data, indices, ptr, bounds, X, y, M, config.n_panel or N, config.prefetch, config.threads,
               -(-K // bc) * bc, bias, ACTIVATIONS[activation], nslices, yt, None, accumulate)
    return out


#: float32 1x1 kernels read X a row at a time in W's random column order, and ran 1.3x slower
#: on a numpy X (4 KiB pages) than on huge pages at 768x3072x128 (90%, every tile and slice
#: config, 2 threads, one process); an X at least this large is copied onto spmm's huge-page
#: buffer first, on the pool. Side by side in one process, after a numpy matmul each call (3
#: processes, 150 rounds, noisy host): 768x3072x128 staged 1.10-1.13x faster than not; at
#: 1024x1024 (512 KiB) staging was 1.10-1.15x slower, so smaller X stays where it is.
#: python -m sparsebench.bench.plain: 1x1 768x3072x128 plain/lab 1.40 -> 1.05-1.12.
STAGE_MIN_BYTES = 1024 * 1024


#: token-major float32 paths other than transposing X whole first (_token_path)
DIRECT, PANELS = "direct", "panels"


def _token_path(A, config):
    """How a float32 token-major call with this config runs: DIRECT (reads_tokens), PANELS
    (panel_tasks, if N gives each thread a panel: panel_width), else None (X transposed whole
    first)."""
    if reads_tokens(A, config):
        return DIRECT
    return PANELS if panel_tasks(A, config) else None


def even_panel(n_tile, n, threads):
    """Tokens a panel for n tokens split evenly over `threads` panel tasks, in whole tiles: rounded
    up where that still leaves a panel per thread, else down; 0 if neither does."""
    up = -(-n // threads // n_tile) * n_tile
    return up if up and -(-n // up) >= threads else n // threads // n_tile * n_tile


def panel_width(config, N):
    """The tokens each panel task takes for N tokens: the config's n_panel, narrowed so that every
    thread gets a panel (even_panel: a config tuned for more tokens or fewer threads, or another
    layout's, does not leave cores idle), at most N; 0 if no width does, and X is then
    transposed whole."""
    return min(config.n_panel, even_panel(config.n_tile, N, config.threads), N)


def reads_tokens(A, config):
    """Whether a token-major call runs the direct kernel (run_direct): blocks of one vector of
    outputs (16x1 on AVX-512, 8x1 on AVX2, 4x1 on the generic build) read token-major X and
    write token-major Y as they are, no transposes. float32, one K slice, not a dense matrix,
    and n_tile one vector (wider tiles take X one of the other two ways: the tuner picks); only
    m_tile plays a part. At 768x3072 the direct kernel's 8 tokens of X (96 KB) leave L1 and
    panels of two vectors win."""
    vw = kernel_module(config.isa).VECTOR_WIDTH
    return (not isinstance(A, QuantizedBSRMatrix) and not A.is_dense and A.block == (vw, 1)
            and config.n_tile == vw and (not config.k_slice or config.k_slice >= A.shape[1]))


def panel_tasks(A, config):
    """Whether a token-major call runs as panel tasks: with an n_panel, each task transposes a
    panel of n_panel tokens of X on its own core and runs every block row on them (no pass
    before the kernel, nothing crosses cores; m_tile plays no part; narrower where N would leave
    a thread without a panel: panel_width). Without, X is transposed whole on the pool first
    and the tasks are block-row ranges, as feature-major (each core then reads only its part of
    W: at few tokens that can win; the tuner picks). Panel tasks take float32 kernels, one K
    slice, K a multiple of the block's columns, and blocks the direct kernel does not take
    (reads_tokens)."""
    K = A.shape[1]
    return (config.n_panel > 0 and not isinstance(A, QuantizedBSRMatrix) and K > 0 and K % A.block[1] == 0
            and not reads_tokens(A, config) and (not config.k_slice or config.k_slice >= K))


def stages(A, X):
    """Whether spmm copies X onto its own huge pages before the kernel (float32 A): a 1x1 A and
    an X of STAGE_MIN_BYTES or more on 4 KiB pages."""
    return A.block == (1, 1) and X.nbytes >= STAGE_MIN_BYTES and not on_huge_pages(X)


def _output(out, shape, X, bias, layout=""):
    """(out, its canonical view): a new array of `shape`, or the caller's `out` checked to be
    writeable, of that shape, with contiguous rows, apart from X and bias."""
    if out is None:
        out = np.empty(shape, dtype=np.float32)
        return out, out
    y = _operand(out, "out")
    if y.shape != shape:
        raise ValueError(f"out has shape {y.shape}, needs {shape}{layout}")
    if not y.flags.writeable:
        raise ValueError("out is read-only; pass a writeable array or out=None")
    # may_share_memory compares bounds only; the exact (slower) test where bounds overlap
    if isinstance(X, np.ndarray) and np.may_share_memory(y, X) and np.shares_memory(y, X):
        raise ValueError("out must not overlap X")
    if bias is not None and np.may_share_memory(y, bias) and np.shares_memory(y, bias):
        raise ValueError("out must not overlap bias")
    return out, y


def _check_packing(A, X):
    """Quantized activations X packed for the int8 kernels of A's block shape."""
    layout = LAYOUTS[A.block]
    if X.layout != layout:
        raise ValueError(f"X was packed in the {X.layout!r} layout, but {A.block[0]}x{A.block[1]} "
                         f"blocks need {layout!r}: quantize_activations(X, block={A.block})")


def _check_bias(bias, M):
    if bias is not None and not (isinstance(bias, np.ndarray) and bias.dtype == np.float32
                                 and bias.shape == (M,) and bias.flags.c_contiguous):
        raise ValueError(f"bias must be a contiguous float32 array of shape ({M},)")


_buffers = threading.local()


def _buffer(tag, rows, cols, ld=0):
    """This thread's scratch array `tag` of (rows, cols), rows `ld` floats apart (0: laid out as
    arrays.activations), grown when too small. The last view of each tag is kept: calls of the
    same shape (every call of a layer) skip the reshaping."""
    views = _buffers.__dict__.setdefault("views", {})
    key = (rows, cols, ld)
    last = views.get(tag)
    if last is not None and last[0] == key:
        return last[1]
    stride = ld or padded_columns(cols)
    view = _flat(tag, rows * stride).reshape(rows, stride)[:, :cols]
    views[tag] = (key, view)
    return view


def _flat(tag, size):
    """This thread's scratch `tag` as `size` float32 (grown when too small)."""
    buf = getattr(_buffers, tag, None)
    if buf is None or buf.size < size:
        buf = _empty((max(size, 1),))
        setattr(_buffers, tag, buf)
    return buf[:size]


def _token_major(A, X, config, out, bias, activation):
    """spmm on token-major X (N x K; or int8 activations quantized from it) into token-major
    Y (N x M)."""
    int8 = isinstance(A, QuantizedBSRMatrix)
    quantized = int8 and isinstance(X, QuantizedActivations)
    if quantized:
        _check_packing(A, X)
    else:
        X = _operand(X, "X")
    N, K = X.shape[::-1] if quantized else X.shape
    M = A.shape[0]
    if K != A.shape[1]:
        raise ValueError(f"shape mismatch: A is {M}x{A.shape[1]} but token-major X has {K} columns "
                         f"(needs {A.shape[1]})")
    _check_bias(bias, M)
    out, yt = _output(out, (N, M), X, bias, " (token-major)")
    if quantized:
        return _multiply(A, X, config, out, None, bias, activation, yt=yt)
    if int8:                                     # quantized and packed from X, stored into yt
        return _multiply(A, X.T, config, out, None, bias, activation, yt=yt, xt=X)
    Yf = _buffer("y", M, N)       # K slices' partial sums; the kernels' checks read its shape
    _multiply(A, X.T, config, Yf, Yf, bias, activation, yt=yt, xt=X)
    return out
