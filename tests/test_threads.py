"""The kernels' thread pool: results do not depend on threads, tasks or concurrent callers."""
import threading

import numpy as np
import pytest

import sparsebench as sb
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
        sb.cpu.kernel_module(cfg.isa).set_spin_us(2000)


def test_bad_spin_setting_is_explained(clean_cpu_caches):
    clean_cpu_caches.setenv(sb.cpu.ENV_SPIN_US, "soon")
    with pytest.raises(ValueError, match="SPARSEBENCH_SPIN_US='soon' must be a whole number"):
        sb.cpu.kernel_module(sb.cpu.compiled_isas()[-1])
