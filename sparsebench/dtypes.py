"""The kernel data types: float32 (BSRMatrix) and int8 (QuantizedBSRMatrix, AVX512-VNNI).

One place that turns a pruned float32 weight into the matrix a dtype's kernels take, checks
that a (dtype, block) pair has kernels on this CPU, and builds the correctness reference a
dtype's results are held to, for the autotuner, compare and the checks of both.
"""
from .bsr import BSRMatrix
from .cpu import best_isa
from .quant import INT8_BLOCKS, QuantizedBSRMatrix, quantize_activations
from .bench.verify import Reference

DTYPES = ("float32", "int8")


def check_dtype(dtype):
    """`dtype` if it names kernels we have, else ValueError listing them."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def check_dtype_blocks(dtype, blocks):
    """Raise a clear error if the dtype's kernels cannot run here or lack one of `blocks`."""
    check_dtype(dtype)
    if dtype != "int8":
        return
    best_isa("int8")               # UnsupportedISAError naming the missing instructions
    missing = ["%dx%d" % tuple(b) for b in blocks if tuple(b) not in INT8_BLOCKS]
    if missing:
        raise ValueError(f"no int8 kernels for {', '.join(missing)} blocks; int8 blocks: "
                         + ", ".join("%dx%d" % b for b in INT8_BLOCKS))


def sparse_matrix(Wp, block, dtype="float32"):
    """The pruned float32 weight `Wp` as the matrix `dtype`'s kernels multiply."""
    if check_dtype(dtype) == "int8":
        return QuantizedBSRMatrix.from_dense(Wp, block)
    return BSRMatrix.from_dense(Wp, block)


def reference(A, Wp, X, threads=1):
    """The exact result sb.spmm(A, X) must reproduce (within float32 rounding).

    float32: Wp @ X. int8: the product of what the kernel multiplies, the dequantized weights
    and the dequantized activations (X quantized as spmm does, scale max |X| / 127), so the
    kernel's integer arithmetic is checked exactly; the quantization error itself is not a
    kernel error (compare reports it as the deviation from the float32 result).
    """
    if isinstance(A, QuantizedBSRMatrix):
        Xq = quantize_activations(X, A.block, threads=threads)
        return Reference(A.to_dense(), Xq.to_float())
    return Reference(Wp, X)

