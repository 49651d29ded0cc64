"""Shared helpers and hypothesis strategies for the sparsebench test suite.

Accuracy model used everywhere (see ``spmm_bound``): W and X are float32, so every product
w*x is exact in float64 and ``W.astype(float64) @ X.astype(float64)`` is the exact result up
to ~K * 2**-53, i.e. exact for our purposes. Any float32 summation of K terms in any order
(with or without FMA) satisfies the classical bound

    |fl(sum_k w_k x_k) - sum_k w_k x_k| <= gamma_K * sum_k |w_k| |x_k|,   gamma_K ~ K * u,

with u = 2**-24 the float32 unit roundoff; adding a bias and storing cost one more rounding.
So we check each output element against ``(K + 2) * u * (|W| @ |X| + |bias|)``. This bound is
rigorous (no flaky failures), elementwise (scale-aware per row and column) and it is *exactly
zero* wherever the row of W or the relevant entries of X are zero: empty rows and all-zero
matrices must come out exactly 0 (or exactly the bias), with no slack at all.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu

U32 = 2.0 ** -24   # float32 unit roundoff

# Hypothesis: tests give their example counts through examples(n), sized so the whole suite
# stays well under a minute on 2 cores; HYPOTHESIS_PROFILE=thorough multiplies them by 20
# (nightly runs, or before a release).
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
for _name in ("default", "thorough"):
    settings.register_profile(_name, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(PROFILE)


def examples(n):
    """Example count for a test: n normally, 20 n under HYPOTHESIS_PROFILE=thorough."""
    return n * 20 if PROFILE == "thorough" else n


SUPPORTED_BLOCKS = tuple(sb.SUPPORTED_BLOCKS)
#: threads values exercised by the correctness tests (the CI machines have 2 cores)
THREADS = (1, 2)


# -- data -------------------------------------------------------------------------------------

def random_dense(M, K, rng, dtype=np.float32):
    """Standard normal M x K matrix (no exact zeros, so every block is structurally nonzero)."""
    return rng.standard_normal((M, K)).astype(dtype)


def random_pruned(M, K, block, sparsity, seed=0, empty_block_rows=0.0):
    """A random float32 M x K matrix block-pruned to `sparsity`, optionally with some whole
    block rows zeroed (empty rows of the BSR structure). Returns (W, A)."""
    rng = np.random.default_rng(seed)
    W = sb.prune(random_dense(M, K, rng), sparsity=sparsity, block=block)
    if empty_block_rows:
        br = block[0]
        nbrows = -(-M // br)
        drop = rng.random(nbrows) < empty_block_rows
        for i in np.flatnonzero(drop):
            W[i * br:(i + 1) * br] = 0
    return W, sb.BSRMatrix.from_dense(W, block=block)


def random_x(K, N, seed=1):
    return np.random.default_rng(seed).standard_normal((K, N)).astype(np.float32)


# -- reference and checks ---------------------------------------------------------------------

def reference(W, X, bias=None):
    """Dense float64 reference (exact up to float64 rounding for float32 inputs)."""
    Y = np.asarray(W, dtype=np.float64) @ np.asarray(X, dtype=np.float64)
    if bias is not None:
        Y = Y + np.asarray(bias, dtype=np.float64)[:, None]
    return Y


def spmm_bound(W, X, bias=None):
    """Elementwise error bound (K + 2) * u * (|W| @ |X| + |bias|); see module docstring."""
    K = W.shape[1]
    mag = np.abs(np.asarray(W, dtype=np.float64)) @ np.abs(np.asarray(X, dtype=np.float64))
    if bias is not None:
        mag = mag + np.abs(np.asarray(bias, dtype=np.float64))[:, None]
    return (K + 2) * U32 * mag


def assert_spmm_close(Y, W, X, bias=None, context=""):
    """Y (float32, M x N) equals W @ X (+ bias) within the rigorous float32 bound.

    Non-finite reference entries (NaN/inf from W or X) must match in kind and sign."""
    M, N = W.shape[0], X.shape[1]
    assert isinstance(Y, np.ndarray) and Y.dtype == np.float32, context
    assert Y.shape == (M, N), f"{context}: shape {Y.shape} != {(M, N)}"
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference(W, X, bias)
        bound = spmm_bound(W, X, bias)
    Y64 = Y.astype(np.float64)
    nan_ref, nan_y = np.isnan(ref), np.isnan(Y64)
    if not np.array_equal(nan_ref, nan_y):
        bad = np.argwhere(nan_ref != nan_y)[:5].tolist()
        raise AssertionError(f"{context}: NaN pattern differs from reference at {bad}")
    inf_ref = np.isinf(ref)
    if not np.array_equal(ref[inf_ref], Y64[inf_ref]) or np.isinf(Y64[~inf_ref]).any():
        raise AssertionError(f"{context}: inf pattern differs from reference")
    fin = np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        err = np.abs(Y64 - ref)
        bad = fin & ~(err <= bound)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        detail = ", ".join(f"{tuple(i)}: got {Y64[tuple(i)]!r} want {ref[tuple(i)]!r} "
                           f"(err {err[tuple(i)]:.3g} > bound {bound[tuple(i)]:.3g})" for i in idx)
        raise AssertionError(f"{context}: {int(bad.sum())} of {bad.size} entries outside the "
                             f"float32 bound: {detail}")


# -- configs ----------------------------------------------------------------------------------

def all_configs(A, n, threads_options=THREADS):
    """Every config kernel_configs offers for A and n, over all available ISAs and threads."""
    out = []
    for t in threads_options:
        out.extend(sb.kernel_configs(A, n, threads=t))
    return out


# -- hypothesis strategies --------------------------------------------------------------------

blocks = st.sampled_from(SUPPORTED_BLOCKS)
sparsities = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.999]),
                       st.floats(min_value=0.0, max_value=0.999, allow_nan=False))
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def pruned_problems(draw, max_m=70, max_k=70, max_n=150):
    """(W, A, X) with random shape, block, sparsity, and sometimes whole empty block rows."""
    M = draw(st.integers(1, max_m), label="M")
    K = draw(st.integers(1, max_k), label="K")
    N = draw(st.integers(1, max_n), label="N")
    block = draw(blocks, label="block")
    sparsity = draw(sparsities, label="sparsity")
    empty = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]), label="empty_block_rows")
    seed = draw(seeds, label="seed")
    W, A = random_pruned(M, K, block, sparsity, seed=seed, empty_block_rows=empty)
    X = random_x(K, N, seed=seed + 1)
    return W, A, X


# -- fixtures ---------------------------------------------------------------------------------

def _clear_cpu_caches():
    for f in (cpu.available_isas, cpu.kernel_module, cpu.encoder_isas, cpu.encoder_module, cpu.peak_module,
              cpu.cpu_features):
        f.cache_clear()


@pytest.fixture
def clean_cpu_caches(monkeypatch):
    """For tests that change what the CPU (or SPARSEBENCH_ISA) reports.

    cpu.available_isas and cpu.kernel_module are lru-cached on the real features and the
    environment: clear them before the test, and again after monkeypatch has restored
    everything, so neither this test nor later ones see stale answers."""
    monkeypatch.delenv(cpu.ENV_ISA, raising=False)
    _clear_cpu_caches()
    yield monkeypatch
    monkeypatch.undo()
    _clear_cpu_caches()


@pytest.fixture
def no_cpu_features(clean_cpu_caches):
    """Pretend the CPU has no SIMD extensions at all (only the generic kernels can run)."""
    clean_cpu_caches.setattr(cpu, "cpu_features", lambda: ())
    yield clean_cpu_caches


@pytest.fixture(autouse=True, scope="session")
def peak_cache_dir(tmp_path_factory):
    """One peak cache for the whole session, never the user's (~/.cache/sparsebench)."""
    from sparsebench.peak import ENV_CACHE_DIR
    old = os.environ.get(ENV_CACHE_DIR)
    os.environ[ENV_CACHE_DIR] = str(tmp_path_factory.mktemp("peak-cache"))
    yield os.environ[ENV_CACHE_DIR]
    if old is None:
        del os.environ[ENV_CACHE_DIR]
    else:
        os.environ[ENV_CACHE_DIR] = old


@pytest.fixture
def steady_machine(monkeypatch):
    """Peak probes that always see the cached peak: no case is degraded, none measured twice."""
    from sparsebench import peak
    steady = peak.Peak(1, 100.0, 200.0, 100.0, 200.0, "test", 0.0)
    monkeypatch.setattr(peak, "peak", lambda threads, max_age=None: steady)
    monkeypatch.setattr(peak, "_run", lambda module, kind, threads, rounds: 100.0)
    monkeypatch.setattr(peak._CopyProbe, "rate", lambda self, repeats=1: 30.0)
