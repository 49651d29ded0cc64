"""The kernels' thread pool: one for the process; results do not depend on threads, tasks or
concurrent callers."""
import glob
import importlib
import threading

import numpy as np
import pytest

import sparsebench as sb
from sparsebench import _generic_csr, _pool
from sparsebench.bench.baselines.generic_csr import csr_arrays
from conftest import assert_spmm_close, random_pruned, random_x


def test_concurrent_callers_each_get_their_own_correct_result():
    problems = []
    for seed, block in enumerate(sb.SUPPORTED_BLOCKS):
        W, A = random_pruned(97, 83, block, 0.7, seed=seed)
        problems.append((W, A, random_x(83, 45, seed=seed), sb.default_config(A, 45, threads=3)))
    failures = []

    def worker(k):
        W, A, X, cfg = problems[k % len(problems)]
        for _ in range(30):
            Y = sb.spmm(A, X, cfg)
            try:
                assert_spmm_close(Y, W, X)
            except AssertionError as e:
                failures.append(e)
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]


def test_more_threads_than_tasks_and_than_cores():
    W, A = random_pruned(9, 40, (4, 1), 0.5)
    X = random_x(40, 33)
    ref = None
    for threads in (1, 2, 7, 64):
        for m_tile in (0, 1):
            cfg = sb.KernelConfig((4, 1), sb.cpu.best_isa(), sb.default_config(A, 33).n_tile,
                                  m_tile=m_tile, threads=threads)
            Y = sb.spmm(A, X, cfg)
            assert_spmm_close(Y, W, X)
            ref = Y if ref is None else ref
            assert np.array_equal(Y, ref), "results must not depend on the thread count"


def test_workers_that_sleep_at_once_are_woken_for_every_call(clean_cpu_caches):
    """SPARSEBENCH_SPIN_US=0: idle workers go straight to sleep, so every call must wake them."""
    clean_cpu_caches.setenv(sb.cpu.ENV_SPIN_US, "0")
    W, A = random_pruned(64, 50, (4, 1), 0.6)
    X = random_x(50, 40)
    cfg = sb.KernelConfig((4, 1), sb.cpu.best_isa(), sb.default_config(A, 40).n_tile, m_tile=1, threads=3)
    try:
        for _ in range(200):
            assert_spmm_close(sb.spmm(A, X, cfg), W, X)
    finally:
        _pool.set_spin_us(_pool.DEFAULT_SPIN_US)


def test_bad_spin_setting_is_explained(clean_cpu_caches):
    clean_cpu_caches.setenv(sb.cpu.ENV_SPIN_US, "soon")
    with pytest.raises(ValueError, match="SPARSEBENCH_SPIN_US='soon' must be a whole number"):
        sb.cpu.kernel_module(sb.cpu.compiled_isas()[-1])


def pool_threads():
    """The pool's worker threads in this process, by name (sb-pool-N)."""
    names = []
    for path in glob.glob("/proc/self/task/*/comm"):
        try:
            with open(path) as f:
                names.append(f.read().strip())
        except OSError:                    # a thread that ended meanwhile
            pass
    return sorted(n for n in names if n.startswith("sb-pool-"))


def test_every_kernel_module_shares_one_pool():
    """fp32 SpMM, int8 SpMM, the encoder ops and the CSR reference all run on one set of workers."""
    threads = _pool.workers() + 3               # more than any earlier test asked for
    W, A = random_pruned(64, 48, (4, 1), 0.5)
    X = random_x(48, 40)
    cfg = sb.KernelConfig((4, 1), sb.cpu.best_isa(), sb.default_config(A, 40).n_tile, m_tile=1,
                          threads=threads)
    assert_spmm_close(sb.spmm(A, X, cfg), W, X)
    started = pool_threads()
    assert _pool.workers() == threads - 1 and len(started) == threads - 1
    if sb.cpu.available_isas("int8"):
        Aq = sb.QuantizedBSRMatrix.from_dense(W, (4, 1))
        sb.spmm(Aq, X, sb.default_config(Aq, 40, threads=threads))
        qkv = random_x(3 * 16, 40)
        sb.cpu.int8_attention()(qkv, np.empty((16, 40), np.float32), 2, 2, None, threads)
    ops = sb.cpu.encoder_module()
    ops.add_layer_norm(random_x(16, 4000), np.ones(16, np.float32), np.zeros(16, np.float32), 1e-5,
                       None, threads)
    ops.gelu_(random_x(64, 4000), threads)
    Y = np.empty((64, 40), np.float32)
    _generic_csr.csr_spmm(*csr_arrays(W), X, Y, threads)
    assert_spmm_close(Y, W, X)
    assert pool_threads() == started and _pool.workers() == threads - 1


def test_kernel_modules_import_the_pool_capsule():
    capsule = _pool._C_API
    assert type(capsule).__name__ == "PyCapsule" and "sparsebench._pool._C_API" in repr(capsule)
    for name in ["_generic_csr"] + [f"_spmm_{isa}" for isa in sb.cpu.available_isas()]:
        module = importlib.import_module(f"sparsebench.{name}")   # imported only with the pool
        assert module.__name__ == f"sparsebench.{name}" and _pool.workers() >= 0


def test_spin_setting_is_one_for_the_process():
    try:
        _pool.set_spin_us(123)
        assert _pool.spin_us() == 123
        _pool.set_spin_us(-5)
        assert _pool.spin_us() == 0
    finally:
        _pool.set_spin_us(_pool.DEFAULT_SPIN_US)
    assert 100 <= _pool.DEFAULT_SPIN_US <= 2000
