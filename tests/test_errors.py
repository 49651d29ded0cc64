"""Every bad input is refused with a Python exception whose message says what is wrong;
nothing reaches the compiled kernels unchecked, and nothing crashes the interpreter."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparsebench as sb
from sparsebench import cpu
from sparsebench.config import check_config, variant_id
from conftest import assert_spmm_close, random_pruned, random_x

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def problem():
    W, A = random_pruned(12, 10, (4, 1), 0.5, seed=0)
    X = random_x(10, 6)
    return W, A, X


def base_config(A, n=6, **changes):
    cfg = sb.kernel_configs(A, n, threads=1, isas=["generic"])[0]
    d = cfg.to_dict()
    d.update(changes)
    return sb.KernelConfig.from_dict(d)


# -- spmm operands ------------------------------------------------------------------------------

def test_float64_x_is_refused_not_copied(problem):
    _, A, X = problem
    with pytest.raises(TypeError, match=r"X must be float32, got float64.*ascontiguousarray"):
        sb.spmm(A, X.astype(np.float64))


def test_fortran_ordered_x(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match=r"X must have contiguous rows \(C order\)"):
        sb.spmm(A, np.asfortranarray(X))


def test_transposed_view_x(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match="contiguous rows"):
        sb.spmm(A, np.ascontiguousarray(X.T).T)


def test_row_strided_column_gap_x(problem):
    """A column-strided view (every other column) does not have contiguous rows."""
    _, A, X = problem
    with pytest.raises(ValueError, match="contiguous rows"):
        sb.spmm(A, np.repeat(X, 2, axis=1)[:, ::2])


def test_one_dimensional_x(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        sb.spmm(A, X[:, 0].copy())


def test_x_not_an_array(problem):
    _, A, X = problem
    with pytest.raises(TypeError, match="X must be a numpy array, got list"):
        sb.spmm(A, X.tolist())


def test_a_not_a_bsr_matrix(problem):
    W, _, X = problem
    with pytest.raises(TypeError, match=r"A must be a sparsebench.BSRMatrix.*from_dense"):
        sb.spmm(W, X)


def test_shape_mismatch(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match=r"shape mismatch: A is 12x10 but X has 9 rows \(needs 10\)"):
        sb.spmm(A, X[:9])


def test_out_wrong_shape(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match=r"out has shape \(12, 5\), needs \(12, 6\)"):
        sb.spmm(A, X, out=np.zeros((12, 5), np.float32))


def test_out_wrong_dtype(problem):
    _, A, X = problem
    with pytest.raises(TypeError, match="out must be float32, got float64"):
        sb.spmm(A, X, out=np.zeros((12, 6), np.float64))


def test_out_fortran_ordered(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match="out must have contiguous rows"):
        sb.spmm(A, X, out=np.zeros((12, 6), np.float32, order="F"))


def test_out_overlapping_x():
    W, A = random_pruned(10, 10, (1, 1), 0.5)
    X = random_x(10, 6)
    with pytest.raises(ValueError, match="out must not overlap X"):
        sb.spmm(A, X, out=X)
    buf = np.zeros((10, 10), np.float32)
    buf[:, :6] = X
    with pytest.raises(ValueError, match="out must not overlap X"):
        sb.spmm(A, buf[:, :6], out=buf[:, 4:10])
    assert np.array_equal(buf[:, :6], X)          # nothing was written


def test_read_only_out_is_refused(problem):
    _, A, X = problem
    out = np.zeros((12, 6), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writ"):
        sb.spmm(A, X, out=out)
    assert not out.any()


def test_bias_overlapping_out_is_refused_or_honoured():
    W = np.eye(8, dtype=np.float32)
    A = sb.BSRMatrix.from_dense(W, block=(4, 1))
    X = np.ones((8, 8), np.float32)
    out = np.empty((8, 8), np.float32)
    out[0] = np.arange(8)
    bias = out[0]
    b0 = bias.copy()
    try:
        sb.spmm(A, X, out=out, bias=bias)
    except ValueError as e:
        assert "bias" in str(e)
    else:
        assert_spmm_close(out, W, X, bias=b0)


@pytest.mark.parametrize("bias, why", [
    (np.zeros(11, np.float32), "wrong length"),
    (np.zeros(12, np.float64), "float64"),
    (np.zeros((12, 1), np.float32), "2-D"),
    (np.zeros(24, np.float32)[::2], "strided"),
    ([0.0] * 12, "list"),
])
def test_wrong_bias(problem, bias, why):
    _, A, X = problem
    with pytest.raises(ValueError, match=r"bias must be a contiguous float32 array of shape \(12,\)"):
        sb.spmm(A, X, bias=bias)


@pytest.mark.parametrize("M, K, N", [(0, 8, 5), (5, 0, 3), (5, 3, 0)])
def test_empty_dimensions_give_empty_or_zero_result(M, K, N):
    A = sb.BSRMatrix.from_dense(np.ones((M, K), np.float32), block=(4, 1))
    Y = sb.spmm(A, np.ones((K, N), np.float32))
    assert Y.shape == (M, N) and not Y.any()


def test_reversed_rows_x(problem):
    _, A, X = problem
    with pytest.raises(ValueError, match="contiguous rows"):
        sb.spmm(A, X[::-1])


@pytest.mark.parametrize("make", ["column", "row", "transposed_column"])
def test_c_contiguous_single_row_or_column_x_is_accepted(make):
    x = np.arange(1, 7, dtype=np.float32)
    if make == "column":          # N = 1
        W = np.ones((4, 6), np.float32)
        X = x[:, None]
    elif make == "row":           # K = 1
        W = np.ones((4, 1), np.float32)
        X = x[None, :]
    else:
        W = np.ones((4, 1), np.float32)
        X = np.ascontiguousarray(x[:, None].copy().T)
    assert X.flags.c_contiguous
    A = sb.BSRMatrix.from_dense(W, block=(4, 1))
    assert_spmm_close(sb.spmm(A, X), W, X)


# -- prune and block arguments ----------------------------------------------------------------

@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_prune_sparsity_out_of_range(s):
    W = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        sb.prune(W, s, block=(4, 1))


def test_prune_needs_2d_float():
    with pytest.raises(ValueError, match="W must be a 2-D matrix"):
        sb.prune(np.ones(8, np.float32), 0.5)
    with pytest.raises(TypeError, match="W must be a floating-point array, got dtype int64"):
        sb.prune(np.ones((4, 4), np.int64), 0.5)


@pytest.mark.parametrize("block, msg", [
    ((3, 3), r"unsupported block shape 3x3; supported: 1x1, 1x4, 4x1, 4x4, 8x1, 16x1"),
    ((2, 1), r"unsupported block shape 2x1"),
    ((0, 0), r"unsupported block shape 0x0"),
    ("abc", r"block must be a pair of integers \(rows, cols\) such as \(4, 1\), got 'abc'"),
    ((4,), r"block must be a pair"),
    ((4, 1, 1), r"block must be a pair"),
    (None, r"block must be a pair"),
    (("a", "b"), r"block must be a pair"),
])
def test_unknown_block(block, msg):
    W = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=msg):
        sb.prune(W, 0.5, block=block)
    with pytest.raises(ValueError, match=msg):
        sb.BSRMatrix.from_dense(W, block=block)


def test_parse_block():
    from sparsebench.blocks import parse_block
    assert parse_block("4x1") == (4, 1) and parse_block("16X1") == (16, 1)
    with pytest.raises(ValueError, match="block must look like 4x1"):
        parse_block("abc")
    with pytest.raises(ValueError, match="unsupported block shape 3x3"):
        parse_block("3x3")


def test_from_dense_bad_input():
    with pytest.raises(ValueError, match="W must be a 2-D matrix"):
        sb.BSRMatrix.from_dense(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="W must be a real numeric array"):
        sb.BSRMatrix.from_dense(np.ones((4, 4), np.complex64))


# -- malformed BSR arrays ---------------------------------------------------------------------

def good_arrays():
    """A valid 8x4 matrix with 4x1 blocks: 2 block rows, 4 block columns, 3 blocks."""
    data = np.arange(12, dtype=np.float32).reshape(3, 4, 1) + 1
    return data, np.array([0, 3, 1]), np.array([0, 2, 3]), (8, 4)


def test_good_arrays_are_accepted():
    A = sb.BSRMatrix(*good_arrays())
    assert A.nnz_blocks == 3 and A.block == (4, 1)


@pytest.mark.parametrize("change, exc, msg", [
    (dict(indices=np.array([0, 4, 1])), ValueError,
     r"block column index 4 at position 1 is out of range \[0, 4\) for K=4 and block 4x1"),
    (dict(indices=np.array([0, -1, 1])), ValueError, r"block column index -1 at position 1 is out of range"),
    (dict(indices=np.array([0, 3])), ValueError, r"indices must have one entry per block \(3\), got 2"),
    (dict(indices=np.array([0.0, 3.0, 1.0])), ValueError, r"indices must be a 1-D integer array"),
    (dict(indices=np.array([[0, 3, 1]])), ValueError, r"indices must be a 1-D integer array"),
    (dict(indptr=np.array([0, 3, 2, 3]), shape=(12, 4)), ValueError,
     r"indptr must be non-decreasing; it decreases after block row 1"),
    (dict(indptr=np.array([0, 2, 3, 3])), ValueError,
     r"indptr must have M/block_rows \+ 1 = 3 entries for shape 8x4 and block 4x1, got 4"),
    (dict(indptr=np.array([0, 3])), ValueError, r"indptr must have .* = 3 entries"),
    (dict(indptr=np.array([0, 2, 2])), ValueError,
     r"indptr must start at 0 and end at the number of blocks \(3\); it runs from 0 to 2"),
    (dict(indptr=np.array([1, 2, 3])), ValueError, r"indptr must start at 0"),
    (dict(indptr=np.array([0.0, 2.0, 3.0])), ValueError, r"indptr must be a 1-D integer array"),
    (dict(data=np.ones((3, 4), np.float32)), ValueError,
     r"data must have shape \(nnz_blocks, block_rows, block_cols\), got \(3, 4\)"),
    (dict(data=np.ones((3, 4, 1, 1), np.float32)), ValueError, r"data must have shape"),
    (dict(data=np.ones((3, 3, 3), np.float32)), ValueError, r"unsupported block shape 3x3"),
    (dict(data=np.ones((3, 4, 1), np.complex64)), TypeError, r"data must be a real numeric array"),
    (dict(shape=(8, -4)), ValueError, r"shape must be non-negative"),
    (dict(shape=(8,)), ValueError, r"shape must be a pair of integers \(M, K\)"),
    (dict(shape=None), ValueError, r"shape must be a pair of integers \(M, K\)"),
    (dict(shape=(8, 3)), ValueError, r"block column index 3 .* out of range \[0, 3\)"),
])
def test_malformed_bsr_arrays(change, exc, msg):
    data, indices, indptr, shape = good_arrays()
    args = dict(data=data, indices=indices, indptr=indptr, shape=shape)
    args.update(change)
    with pytest.raises(exc, match=msg):
        sb.BSRMatrix(args["data"], args["indices"], args["indptr"], args["shape"])


def test_bsr_arrays_are_read_only():
    _, A = random_pruned(12, 10, (4, 1), 0.5)
    for arr in (A.data, A.indices, A.indptr, A.task_bounds(2, 0), A.task_bounds(1, 4)):
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        A.data[...] = 0
    with pytest.raises(ValueError):
        A.indices.flags.writeable = True           # a view of a frozen array cannot be thawed


def test_bsr_attributes_cannot_be_reassigned():
    _, A = random_pruned(12, 10, (4, 1), 0.5)
    for name, value in [("shape", (12, 1)), ("block", (1, 1)), ("data", A.data[:1]),
                        ("indptr", A.indptr[::-1])]:
        with pytest.raises((AttributeError, TypeError)):
            setattr(A, name, value)


def test_bsr_arrays_cannot_be_thawed():
    _, A = random_pruned(12, 10, (4, 1), 0.5)
    for arr in (A.data, A.indptr):
        with pytest.raises(ValueError):
            arr.flags.writeable = True


# -- configs ------------------------------------------------------------------------------------

def test_config_for_wrong_block(problem):
    _, A, X = problem
    cfg = base_config(A, block=(1, 1))
    with pytest.raises(sb.ConfigError, match="config is for 1x1 blocks but the matrix has 4x1 blocks"):
        sb.spmm(A, X, config=cfg)


def test_config_n_tile_not_compiled(problem):
    _, A, X = problem
    cfg = base_config(A, n_tile=5)
    with pytest.raises(sb.ConfigError,
                       match=r"no generic kernel with n_tile=5 for block 4x1; compiled widths: \[4, "):
        sb.spmm(A, X, config=cfg)


@pytest.mark.parametrize("n_panel", [6, -4, 3])
def test_config_n_panel_not_multiple_of_n_tile(problem, n_panel):
    _, A, X = problem
    cfg = base_config(A, n_tile=4, n_panel=n_panel)
    with pytest.raises(sb.ConfigError, match=rf"n_panel={n_panel} must be 0 or a multiple of n_tile=4"):
        sb.spmm(A, X, config=cfg)


@pytest.mark.parametrize("prefetch", [65, 1000, -1])
def test_config_prefetch_out_of_range(problem, prefetch):
    _, A, X = problem
    with pytest.raises(sb.ConfigError, match=rf"prefetch={prefetch} must be in \[0, 64\]"):
        sb.spmm(A, X, config=base_config(A, prefetch=prefetch))


@pytest.mark.parametrize("threads", [0, -1, 5000])
def test_config_threads_out_of_range(problem, threads):
    _, A, X = problem
    with pytest.raises(sb.ConfigError, match=rf"threads={threads} must be in \[1, 4096\]"):
        sb.spmm(A, X, config=base_config(A, threads=threads))


def test_config_negative_m_tile(problem):
    _, A, X = problem
    with pytest.raises(sb.ConfigError, match=r"m_tile=-1 must be >= 0"):
        sb.spmm(A, X, config=base_config(A, m_tile=-1))


def test_config_unknown_isa(problem):
    _, A, X = problem
    with pytest.raises(sb.ConfigError, match=r"unknown instruction set 'sse9'; choose one of avx512, avx2, generic"):
        sb.spmm(A, X, config=base_config(A, isa="sse9"))
    with pytest.raises(sb.UnsupportedISAError, match=r"unknown instruction set 'sse9'"):
        sb.kernel_configs(A, 6, isas=["sse9"])


def test_config_not_a_kernel_config(problem):
    _, A, X = problem
    with pytest.raises(TypeError, match="config must be a KernelConfig or None, got str"):
        sb.spmm(A, X, config=str(base_config(A)))


def test_config_dict_instead_of_kernel_config(problem):
    _, A, X = problem
    with pytest.raises(TypeError, match=r"config must be a KernelConfig or None, got dict; use KernelConfig.from_dict"):
        sb.spmm(A, X, config=base_config(A).to_dict())


def test_config_error_is_a_value_error_and_a_sparsebench_error(problem):
    _, A, X = problem
    with pytest.raises(ValueError):
        sb.spmm(A, X, config=base_config(A, threads=0))
    with pytest.raises(sb.SparsebenchError):
        sb.spmm(A, X, config=base_config(A, threads=0))


def test_from_dict_unknown_field(problem):
    _, A, _ = problem
    d = base_config(A).to_dict()
    d["bogus"] = 1
    with pytest.raises(sb.ConfigError, match=r"unknown KernelConfig fields \['bogus'\]; known: \["):
        sb.KernelConfig.from_dict(d)


def test_from_dict_missing_field(problem):
    _, A, _ = problem
    d = base_config(A).to_dict()
    del d["n_tile"]
    with pytest.raises(sb.ConfigError, match=r"incomplete KernelConfig"):
        sb.KernelConfig.from_dict(d)


def test_from_json_unknown_field(problem):
    _, A, _ = problem
    with pytest.raises(sb.ConfigError, match="unknown KernelConfig fields"):
        sb.KernelConfig.from_json('{"block": [4, 1], "isa": "generic", "n_tile": 4, "speed": 9}')


def test_kernel_config_is_frozen(problem):
    _, A, _ = problem
    cfg = base_config(A)
    with pytest.raises(AttributeError):
        cfg.threads = 8


# -- the low-level kernel entry point ---------------------------------------------------------

def run_args(A, X, cfg):
    module, vid = variant_id(cfg)
    M = A.shape[0]
    Y = np.zeros((M, X.shape[1]), np.float32)
    args = [vid, A.data, A._indices_padded, A.indptr, A.task_bounds(cfg.threads, cfg.m_tile),
            X, Y, M, X.shape[1], 0, cfg.threads, -(-A.shape[1] // A.block[1]) * A.block[1], None]
    return module, args


def test_run_with_valid_arguments(problem):
    """Sanity check for the garbage tests below: the same call with good arguments works."""
    W, A, X = problem
    for cfg in sb.kernel_configs(A, 6, threads=1):
        module, args = run_args(A, X, cfg)
        module.run(*args)
        assert_spmm_close(args[6], W, X, context=str(cfg))


def _read_only(a):
    a.flags.writeable = False
    return a


GARBAGE = {
    "vid -1": (0, -1),
    "vid too big": (0, 10 ** 6),
    "data float64": (1, lambda A: A.data.astype(np.float64)),
    "data non-contiguous": (1, lambda A: np.repeat(A.data, 2, axis=0)[::2]),
    "indices int64": (2, lambda A: A._indices_padded.astype(np.int64)),
    "indices without pad": (2, lambda A: A.indices.copy()),
    "indptr int64": (3, lambda A: A.indptr.astype(np.int64)),
    "indptr short": (3, lambda A: A.indptr[:-1].copy()),
    "bounds float": (4, lambda A: np.array([0.0, 3.0])),
    "bounds too short": (4, lambda A: np.array([0], np.int32)),
    "bounds not covering": (4, lambda A: np.array([0, 1], np.int32)),
    "X float64": (5, lambda A: np.zeros((10, 6))),
    "X int32": (5, lambda A: np.zeros((10, 6), np.int32)),
    "X 1-D": (5, lambda A: np.zeros(10, np.float32)),
    "X Fortran": (5, lambda A: np.zeros((10, 6), np.float32, order="F")),
    "Y float64": (6, lambda A: np.zeros((12, 6))),
    "Y wrong rows": (6, lambda A: np.zeros((11, 6), np.float32)),
    "Y wrong cols": (6, lambda A: np.zeros((12, 5), np.float32)),
    "M wrong": (7, 13),
    "panel 0": (8, 0),
    "prefetch too big": (9, 65),
    "threads 0": (10, 0),
    "X too few rows for kcols": (11, 10 ** 6),
    "bias float64": (12, lambda A: np.zeros(12)),
    "bias short": (12, lambda A: np.zeros(3, np.float32)),
    "Y read-only": (6, lambda A: _read_only(np.zeros((12, 6), np.float32))),
    "data too small": (1, lambda A: np.zeros((1, 4, 1), np.float32)),
}


@pytest.mark.parametrize("isa", sb.cpu.available_isas())
@pytest.mark.parametrize("what", list(GARBAGE))
def test_run_with_garbage_raises_value_error(problem, isa, what):
    _, A, X = problem
    cfg = sb.kernel_configs(A, 6, threads=1, isas=[isa])[0]
    module, args = run_args(A, X, cfg)
    pos, value = GARBAGE[what]
    args[pos] = value(A) if callable(value) else value
    with pytest.raises(ValueError, match="sparsebench kernel called with invalid arguments"):
        module.run(*args)


def run_in_subprocess(code):
    """Run `code` in a fresh interpreter (a crash there must not take pytest down)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    prelude = textwrap.dedent("""
        import numpy as np, sparsebench as sb
        from sparsebench.config import variant_id
        def setup(isa, M=12, K=10, N=6):
            W = sb.prune(np.random.default_rng(0).standard_normal((M, K)).astype(np.float32), 0.5, (4, 1))
            A = sb.BSRMatrix.from_dense(W, (4, 1))
            cfg = sb.kernel_configs(A, N, threads=1, isas=[isa])[0]
            module, vid = variant_id(cfg)
            X = np.ones((K, N), np.float32); Y = np.zeros((M, N), np.float32)
            return module, [vid, A.data, A._indices_padded, A.indptr, A.task_bounds(1, 0),
                            X, Y, M, N, 0, 1, K, None]
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_with_none_arguments_does_not_crash():
    code = """
        for isa in sb.cpu.available_isas():
            for pos in (1, 2, 3, 4, 5, 6):
                module, args = setup(isa)
                args[pos] = None
                try:
                    module.run(*args)
                except (ValueError, TypeError):
                    pass
                else:
                    raise SystemExit(f"{isa}: run() accepted None as argument {pos}")
        print("survived")
    """
    r = run_in_subprocess(code)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


def test_run_with_too_small_data_raises_instead_of_reading_out_of_bounds():
    code = """
        module, args = setup("generic", M=4000, K=4000, N=16)
        args[1] = np.zeros((1, 4, 1), np.float32)
        try:
            module.run(*args)
        except ValueError as e:
            print("raised", e)
    """
    r = run_in_subprocess(code)
    assert r.returncode == 0 and "raised" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])


# -- instruction-set availability ---------------------------------------------------------------

def test_missing_cpu_features_raise_unsupported_isa(no_cpu_features):
    assert cpu.available_isas() == ["generic"]
    with pytest.raises(sb.UnsupportedISAError,
                       match=r"the 'avx512' kernels need avx2, avx512bw, avx512dq, avx512f, "
                             r"avx512vl, fma, which this CPU \(.*\) lacks; use one of: generic"):
        cpu.kernel_module("avx512")
    with pytest.raises(sb.UnsupportedISAError, match=r"the 'avx2' kernels need avx2, fma"):
        cpu.kernel_module("avx2")
    W, A = random_pruned(20, 12, (4, 1), 0.5)
    with pytest.raises(sb.UnsupportedISAError, match=r"avx512f"):
        sb.kernel_configs(A, 8, isas=["avx512"])
    # a config naming the missing ISA is refused by spmm (as a ConfigError carrying the reason)
    cfg = sb.KernelConfig((4, 1), "avx512", 16)
    with pytest.raises(sb.SparsebenchError, match=r"'avx512' kernels need .*avx512f"):
        check_config(cfg, A)
    X = random_x(12, 8)
    with pytest.raises(sb.SparsebenchError, match=r"'avx512' kernels need .*avx512f"):
        sb.spmm(A, X, config=cfg)
    # ... while the generic kernels still work, and are what the defaults pick
    cfgs = sb.kernel_configs(A, 8, threads=1)
    assert cfgs and {c.isa for c in cfgs} == {"generic"}
    assert sb.default_config(A, 8).isa == "generic"
    assert_spmm_close(sb.spmm(A, X), W, X)
    for c in cfgs:
        assert_spmm_close(sb.spmm(A, X, config=c), W, X, context=str(c))


def test_forcing_a_missing_isa_by_environment_raises(no_cpu_features):
    no_cpu_features.setenv(cpu.ENV_ISA, "avx512")
    with pytest.raises(sb.UnsupportedISAError, match="avx512f"):
        cpu.available_isas()


def test_forcing_an_isa_by_environment(clean_cpu_caches):
    clean_cpu_caches.setenv(cpu.ENV_ISA, "generic")
    assert cpu.available_isas() == ["generic"]
    W, A = random_pruned(20, 12, (4, 1), 0.5)
    assert {c.isa for c in sb.kernel_configs(A, 8)} == {"generic"}
    cpu.available_isas.cache_clear()
    clean_cpu_caches.setenv(cpu.ENV_ISA, "sse9")
    with pytest.raises(sb.UnsupportedISAError, match="unknown instruction set 'sse9'"):
        cpu.available_isas()


def test_cpu_caches_restored_after_isa_tests():
    """Runs after the monkeypatching tests above (file order): real features are back."""
    assert set(cpu.available_isas()) == {i for i in cpu.compiled_isas() if cpu.isa_supported(i)}
    assert "generic" in cpu.available_isas()


def test_an_unbuilt_source_tree_says_how_to_run(tmp_path):
    """Python run from a clone's folder imports its source tree before an installed sparsebench:
    without the compiled modules that is a clear ImportError saying what to do."""
    import shutil
    import subprocess
    import sys
    src = os.path.dirname(sb.__file__)
    shutil.copytree(src, tmp_path / "sparsebench", ignore=shutil.ignore_patterns("*.so", "_buildinfo.py", "__pycache__"))
    (tmp_path / "setup.py").write_text("")
    # as after a plain `pip install .`: no editable install's finder to fall back on
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
            "if not getattr(f, '__module__', '').startswith('__editable__')]; import sparsebench")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode != 0
    assert "is not built" in done.stderr and "pip install -e ." in done.stderr


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_spmm_into_skips_python_checks_but_the_kernels_still_refuse_bad_arrays(dtype):
    """The encoder's unchecked entry (spmm_into) computes what spmm does, and arrays its
    workspace would never hold still get a ValueError from the kernel modules, not a crash."""
    from sparsebench.spmm import spmm_into
    if dtype == "int8" and not cpu.available_isas("int8"):
        pytest.skip("this CPU (or build) has no AVX512-VNNI kernels")
    rng = np.random.default_rng(3)
    W = sb.prune(rng.standard_normal((40, 24), dtype=np.float32), 0.5, (4, 1))
    A = sb.BSRMatrix.from_dense(W, (4, 1)) if dtype == "float32" else sb.QuantizedBSRMatrix.from_dense(W, (4, 1))
    X, bias = random_x(24, 9), rng.standard_normal(40, dtype=np.float32)
    cfg = sb.default_config(A, 9, 1)
    out = np.empty((40, 9), np.float32)
    assert np.array_equal(spmm_into(A, X, cfg, out, bias, "gelu"), sb.spmm(A, X, cfg, bias=bias, activation="gelu"))
    for X_bad, out_bad in [(X[:, :8], out), (X[:20], out), (X.astype(np.float64), out),
                           (X, np.empty((40, 9), np.float64)), (X, np.empty((39, 9), np.float32)),
                           (X, np.asfortranarray(out))]:
        with pytest.raises(ValueError):
            spmm_into(A, X_bad, cfg, out_bad)
    readonly = out.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        spmm_into(A, X, cfg, readonly)
    if dtype == "int8":
        with pytest.raises(ValueError, match="layout"):
            spmm_into(A, sb.quantize_activations(X, block=(4, 4)), cfg, out)


# -- found by an adversarial review (session 14) --------------------------------------------------

def test_big_endian_float32_is_refused_by_every_kernel_module(problem):
    """'>f4' has numpy's float32 type number: the compiled checks also ask for native byte order."""
    from sparsebench.models import gelu_
    from sparsebench.quant import layer_norm_quantized
    _, A, X = problem
    x = random_x(8, 4)
    with pytest.raises(TypeError, match="native byte order"):
        cpu.encoder_module().add_layer_norm(x, np.ones(8, ">f4"), np.zeros(8, np.float32), 1e-5)
    if cpu.available_isas("int8"):
        with pytest.raises(TypeError, match="native byte order"):
            layer_norm_quantized(x.astype(">f4"), np.ones(8, np.float32), np.zeros(8, np.float32), 1e-5)
    with pytest.raises(TypeError, match="native byte order"):
        gelu_(np.array([[-3.0, 0.5, 1.0]], ">f4"))
    with pytest.raises(ValueError, match="invalid arguments"):
        cpu.kernel_module(cpu.best_isa()).transpose(X.astype(">f4"), np.empty((6, 10), np.float32), 1)


def test_layer_norm_refuses_gamma_or_beta_inside_x():
    from sparsebench.quant import layer_norm_quantized
    x = random_x(32, 32)
    if cpu.available_isas("int8"):
        with pytest.raises(ValueError, match="gamma and beta must not overlap x"):
            layer_norm_quantized(x, x[0], np.zeros(32, np.float32), 1e-5, threads=1)
    ops = cpu.encoder_module()
    with pytest.raises(ValueError, match="gamma and beta must not overlap x"):
        ops.add_layer_norm(x, np.ones(32, np.float32), x[1], 1e-5)


def test_unsigned_indptr_that_decreases_is_refused():
    with pytest.raises(ValueError, match="non-decreasing"):
        sb.BSRMatrix(np.ones((2, 4, 1), np.float32), [0, 0], np.array([0, 2, 1, 2], np.uint8), (12, 2))
    A = sb.BSRMatrix(np.ones((2, 4, 1), np.float32), [0, 1], np.array([0, 1, 1, 2], np.uint16), (12, 2))
    assert A.to_dense().sum() == 8


@pytest.mark.parametrize("bad", [(4.9, 1), (4, 1.0), ("4", "1")])
def test_block_must_be_whole_numbers(bad):
    with pytest.raises(ValueError, match="pair of integers"):
        sb.BSRMatrix.from_dense(np.ones((8, 8), np.float32), block=bad)


def test_kernel_config_block_must_be_whole_numbers():
    with pytest.raises(sb.ConfigError, match="pair of integers"):
        sb.KernelConfig(block=(4.9, 1), isa="generic", n_tile=4)
    assert sb.KernelConfig(block=np.array([4, 1]), isa="generic", n_tile=4).block == (4, 1)


def test_shape_must_be_whole_numbers():
    with pytest.raises(ValueError, match="pair of integers"):
        sb.BSRMatrix(np.ones((1, 4, 1), np.float32), [0], [0, 1, 1], (8.5, 2))


def test_from_scipy_takes_only_scipy_matrices():
    with pytest.raises(TypeError, match="scipy.sparse matrix.*from_dense"):
        sb.BSRMatrix.from_scipy(np.ones((8, 8), np.float32), block=(4, 1))


def test_masked_arrays_are_refused(problem):
    """The kernels would ignore the mask."""
    from sparsebench.models import gelu_
    _, A, X = problem
    with pytest.raises(TypeError, match="must not be a masked array"):
        sb.spmm(A, np.ma.masked_array(X, mask=X > 0))
    with pytest.raises(TypeError, match="not masked"):
        gelu_(np.ma.masked_array(X, mask=X > 0))
    with pytest.raises(TypeError, match="not masked"):
        cpu.encoder_module().add_layer_norm(np.ma.masked_array(X), np.ones(10, np.float32),
                                            np.zeros(10, np.float32), 1e-5)


def test_threads_beyond_the_pool_run_on_the_pool():
    """KernelConfig allows up to 4096 threads; the pool runs at most SB_POOL_MAX, on every path
    (the token-major transpose and the staging copy used to refuse more). In a process of its
    own: the pool keeps the workers it starts."""
    script = textwrap.dedent("""
        import numpy as np, sparsebench as sb
        from sparsebench import cpu
        rng = np.random.default_rng(0)
        W = rng.standard_normal((12, 10)).astype(np.float32)
        A = sb.BSRMatrix.from_dense(W, block=(4, 1))
        Xt = rng.standard_normal((8, 10)).astype(np.float32)
        module = cpu.kernel_module(cpu.best_isa())
        cfg = sb.KernelConfig(block=(4, 1), isa=cpu.best_isa(), n_tile=module.VECTOR_WIDTH, threads=300)
        Y = sb.spmm(A, Xt, config=cfg, layout="tokens")
        assert np.allclose(Y, Xt.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-5, atol=1e-5)
        src = rng.standard_normal((40, 70)).astype(np.float32)
        dst = np.empty((70, 40), np.float32)
        module.transpose(src, dst, 1000)
        assert np.array_equal(dst, src.T)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
