"""The optional baselines: oneMKL through ctypes (`mkl`, `mkl-bsr`) and PyTorch (`torch`,
`torch-csr`), against a float64 reference; skipped where the extra is not installed."""
import gc
import importlib.util
import sys

import numpy as np
import pytest

import sparsebench as sb
from sparsebench.bench.baselines import MethodUnavailable, Problem, mkl, torch_

U32 = 2.0 ** -24


def _mkl_missing():
    try:
        mkl.load()
    except MethodUnavailable as e:
        return str(e)
    return ""


needs_mkl = pytest.mark.skipif(bool(_mkl_missing()), reason=_mkl_missing() or "oneMKL present")
# find_spec, not import: importing torch here would load libgomp before torch_ can tune it
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason=f"PyTorch is not installed: {torch_.INSTALL_HINT}")

METHODS = {b.name: b for b in mkl.BASELINES + torch_.BASELINES}

# (M, K, N, block, sparsity): odd shapes, N = 1, square and non-square blocks
CASES = [(37, 53, 5, (4, 1), 0.7), (37, 53, 1, (1, 1), 0.5), (64, 48, 7, (4, 4), 0.8),
         (40, 24, 3, (4, 1), 0.9)]


def problem(M, K, N, block, sparsity, threads=2, seed=0):
    rng = np.random.default_rng(seed)
    W = sb.prune(rng.standard_normal((M, K)).astype(np.float32), sparsity=sparsity, block=block)
    X = rng.standard_normal((K, N)).astype(np.float32)
    return Problem(W=W, A=sb.BSRMatrix.from_dense(W, block=block), X=X, sparsity=sparsity,
                   threads=threads)


def check(Y, p):
    """Y equals W @ X in float64 up to float32 summation error, (K + 2) u max(|W| @ |X|)."""
    W, X = p.W.astype(np.float64), p.X.astype(np.float64)
    assert Y.dtype == np.float32 and Y.shape == (W.shape[0], X.shape[1])
    atol = (W.shape[1] + 2) * U32 * float(np.max(np.abs(W) @ np.abs(X), initial=0.0))
    np.testing.assert_allclose(Y, W @ X, rtol=0, atol=atol)


def run_twice(name, p):
    """Two calls of the prepared method (the second reuses its buffers), both checked."""
    run = METHODS[name].prepare(p)
    check(run(), p)
    check(run(), p)


def bsr_ok(case):
    M, K, _, (br, bc), _ = case
    return br == bc and M % br == 0 and K % bc == 0


@needs_mkl
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_mkl(case, threads):
    p = problem(*case, threads=threads)
    run_twice("mkl", p)
    if bsr_ok(case):
        run_twice("mkl-bsr", p)


@needs_torch
@pytest.mark.parametrize("name", ["torch", "torch-csr"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch(case, name):
    run_twice(name, problem(*case, threads=2))


@pytest.mark.parametrize("name", [pytest.param("mkl", marks=needs_mkl),
                                  pytest.param("mkl-bsr", marks=needs_mkl),
                                  pytest.param("torch", marks=needs_torch),
                                  pytest.param("torch-csr", marks=needs_torch)])
def test_all_zero_w_gives_exact_zeros(name):
    p = problem(16, 16, 3, (4, 4), 0.0)
    p.W[:] = 0
    p.A = sb.BSRMatrix.from_dense(p.W, block=(4, 4))
    assert p.A.nnz_blocks == 0
    np.testing.assert_array_equal(METHODS[name].prepare(p)(), np.zeros((16, 3), np.float32))


@needs_mkl
@pytest.mark.parametrize("case, reason", [((37, 53, 5, (4, 1), 0.7), "square blocks"),
                                          ((38, 52, 5, (4, 4), 0.7), "divisible by the block 4x4")])
def test_mkl_bsr_refuses_what_mkl_cannot_store(case, reason):
    with pytest.raises(MethodUnavailable, match=reason):
        METHODS["mkl-bsr"].prepare(problem(*case))


@needs_mkl
def test_mkl_status_is_checked_and_named():
    with pytest.raises(mkl.MKLError, match="mkl_sparse_optimize failed: SPARSE_STATUS_NOT_INIT"):
        mkl.load().call("mkl_sparse_optimize", None)


@needs_mkl
def test_mkl_handle_destroyed_with_the_callable(monkeypatch):
    destroyed = []

    def spy(lib, handle, *keepalive):
        destroyed.append(handle)
        real_destroy(lib, handle, *keepalive)
    real_destroy = mkl._destroy
    monkeypatch.setattr(mkl, "_destroy", spy)
    run = METHODS["mkl"].prepare(problem(*CASES[0]))
    run()
    assert destroyed == []
    del run
    gc.collect()
    assert len(destroyed) == 1 and destroyed[0]


@needs_mkl
def test_mkl_version_names_library_and_threading():
    v = METHODS["mkl"].version()
    assert "Math Kernel Library" in v and "threading" in v
    assert "KMP_BLOCKTIME" in v or "OMP_WAIT_POLICY" in v


def test_mkl_missing_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setattr(mkl, "library_candidates", lambda: ["libmkl_rt_not_here.so"])
    mkl.load.cache_clear()
    try:
        with pytest.raises(MethodUnavailable) as e:
            METHODS["mkl"].prepare(problem(*CASES[0]))
        assert str(e.value) == 'oneMKL is not installed: pip install "sparsebench[mkl]"'
        assert METHODS["mkl"].version() == "oneMKL not installed"
    finally:
        mkl.load.cache_clear()


@pytest.mark.parametrize("name", ["torch", "torch-csr"])
def test_torch_missing_gives_one_line_install_hint(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "torch", None)     # makes `import torch` fail
    with pytest.raises(MethodUnavailable) as e:
        METHODS[name].prepare(problem(*CASES[0]))
    assert str(e.value) == 'PyTorch is not installed: pip install "sparsebench[torch]"'
    assert METHODS[name].version() == "PyTorch not installed"


@needs_torch
def test_torch_version_and_threads():
    import torch
    p = problem(*CASES[0], threads=1)
    run = METHODS["torch-csr"].prepare(p)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    check(run(), p)
    assert torch.get_num_threads() == 1
    assert METHODS["torch"].version().startswith(f"torch {torch.__version__}")


@pytest.mark.parametrize("sparsify", [False, True])
def test_bert_torch_methods_without_torch_are_skipped_with_an_install_hint(sparsify, monkeypatch):
    """`sparsebench bert --compare torch,torch-sparsify` on a machine without torch: the method is
    unavailable with a one-line hint, not a traceback."""
    from sparsebench.models import BertEncoder, runner
    from sparsebench.models.config import BertConfig
    monkeypatch.setitem(sys.modules, "torch", None)              # import torch now raises ImportError
    cfg = BertConfig("tiny", layers=1, hidden=16, heads=2, intermediate=32, vocab_size=50, max_positions=16)
    enc = BertEncoder.random(cfg, sparsity=0.5, block=(4, 1))
    with pytest.raises(MethodUnavailable, match=r"torch is not installed\): pip install \"sparsebench\[torch\]\""):
        runner.torch_method(enc, runner.make_inputs(cfg, 1, 4), 1, sparsify=sparsify)
