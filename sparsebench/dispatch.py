"""The kernel config used when nothing is tuned: a heuristic, sensible rather than optimal."""
import dataclasses

from .config import KernelConfig
from .cpu import available_isas, best_isa, default_threads, kernel_module
from .machine import cpu_identity
from .quant import QuantizedBSRMatrix

#: below this many multiply-adds a call runs on one thread (waking the pool costs more)
SERIAL_WORK = 1 << 17
#: the int8 kernels run about 3x the multiply-adds per second: a higher bar for threads
SERIAL_WORK_INT8 = 1 << 19
#: X above this many bytes no longer fits the L2 of the machines we target
L2_PANEL_BYTES = 512 * 1024
#: the block our dense GEMM stores W in (a dense variant is compiled for it)
DENSE_BLOCK = (4, 1)
#: L1 data cache per core when the CPU does not say
L1_BYTES = 32 * 1024


def _int8_default(A, n, threads):
    isa = best_isa("int8")
    module = kernel_module(isa, "int8")
    widths = sorted(nt for br, bc, nt in module.VARIANTS if (br, bc) == A.block)
    # the narrowest tile that covers N, at most 64 columns (768x768, 90%, one thread): at N = 8
    # a 4x1 tile of 16 ran 1.5-1.8x faster than one of 64; at N = 36-48 one masked tile of 64
    # beat tiles of 32 and 16 for 4x1 and 1x4 (1.4-2.5x), and 4x4 took the same with each
    n_tile = min([w for w in widths if w >= n and w <= 64]
                 or [max([w for w in widths if w <= 64] or widths[:1])])
    work = A.nnz * max(n, 1)
    # prefetching the X rows of the group 4 ahead won by a few % on the BERT-Base shapes
    return KernelConfig(A.block, isa, n_tile, 0, 0, 0, 4,
                        threads if work >= SERIAL_WORK_INT8 else 1, "int8")


def default_config(A, n, threads=None, layout="features"):
    """The heuristic used when no tuned config is given: sensible, not optimal. layout "tokens":
    for X token-major (spmm(..., layout="tokens"))."""
    threads = threads or default_threads()
    if isinstance(A, QuantizedBSRMatrix):
        return _int8_default(A, n, threads)
    isa = available_isas()[0]
    module = kernel_module(isa)
    br, bc = A.block
    # prefer variants that hold a whole block row in registers (one pass over the blocks)
    widths = (sorted(nt for vbr, vbc, nt, rb in module.VARIANTS if (vbr, vbc) == A.block and rb == br)
              or sorted(nt for vbr, vbc, nt, rb in module.VARIANTS if (vbr, vbc) == A.block))
    # about 16-24 accumulators: wide tiles for short blocks, narrow for tall ones
    target = max(module.VECTOR_WIDTH, (24 // (br + 1)) * module.VECTOR_WIDTH)
    n_tile = max([w for w in widths if w <= target] or widths[:1])
    while n_tile > module.VECTOR_WIDTH and n_tile // 2 >= n and n_tile // 2 in widths:
        n_tile //= 2
    K = A.shape[1]
    if layout == "tokens" and n_tile == module.VECTOR_WIDTH and A.block == (n_tile, 1):
        # the direct kernel (spmm.reads_tokens) reads the rows of DIRECT_TOKENS tokens of X at
        # once: beyond L1 (768x3072, 16x1: 96 KB) panels of two vectors ran 1.16-1.18x faster
        l1 = cpu_identity()["caches"].get("L1d") or L1_BYTES
        if min(n, module.DIRECT_TOKENS) * K * 4 > l1:
            n_tile = 2 * module.VECTOR_WIDTH
    # single-row blocks load one X vector per multiply-add: keep a K slice of X in cache;
    # the others prefetch the X rows of coming blocks, further ahead once X outgrows L2
    # (what won most often in results/bench-bert-spmm.csv)
    k_slice = 128 if br == 1 and K > 128 else 0
    prefetch = 0 if br == 1 else (16 if K * n * 4 > L2_PANEL_BYTES else 4)
    work = A.nnz * max(n, 1)
    threads = threads if work >= SERIAL_WORK else 1
    config = KernelConfig(A.block, isa, n_tile, 0, k_slice, 0, prefetch, threads)
    # token-major: panel tasks of one tile (spmm.panel_tasks) wherever N gives each thread one.
    # In compare's loops (BERT-Base 90% 4x1, N = 128, 2 threads, 2 rounds) they ran 1.13-1.28x
    # the feature-major time against 1.22-1.56x for X transposed whole first
    if layout == "tokens":
        from .spmm import panel_tasks, panel_width
        panels = dataclasses.replace(config, n_panel=n_tile)
        if panel_tasks(A, panels) and panel_width(panels, n):
            return panels
    return config
