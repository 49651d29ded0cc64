"""What a plain user script gets: OpenBLAS tamed whatever the import order."""
import os
import subprocess
import sys

import numpy as np

import sparsebench as sb

NUMPY_FIRST = """
import numpy as np
a = np.arange(90000, dtype=np.float32).reshape(300, 300) / 1e4
before = a @ a
import sparsebench as sb
assert np.array_equal(a @ a, before)          # numpy still computes the same after the restart
print(sb.BLAS_SPIN)
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "SPARSEBENCH_TAME_BLAS")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_openblas_loaded_first_is_restarted_with_the_short_timeout():
    note = _run(NUMPY_FIRST)
    assert "OPENBLAS_THREAD_TIMEOUT=4, set after load" in note and "restarted its pool" in note


def test_sparsebench_first_sets_the_timeout_before_numpy_loads():
    note = _run("import sparsebench as sb, os; print(sb.BLAS_SPIN, os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    assert note == "OPENBLAS_THREAD_TIMEOUT=4 before numpy loaded 4"


def test_a_users_timeout_and_the_opt_out_are_respected():
    assert _run(NUMPY_FIRST, OPENBLAS_THREAD_TIMEOUT="20") == "OPENBLAS_THREAD_TIMEOUT=20 (user)"
    assert _run(NUMPY_FIRST, SPARSEBENCH_TAME_BLAS="0") == "left alone (SPARSEBENCH_TAME_BLAS=0)"


def test_single_row_blocks_on_a_numpy_x_match_the_reference():
    rng = np.random.default_rng(1)
    for block in [(1, 1), (1, 4)]:
        W = sb.prune(rng.standard_normal((300, 1024), dtype=np.float32), 0.8, block)
        X = rng.standard_normal((1024, 130), dtype=np.float32)[:, 1:129]   # a column slice
        A = sb.BSRMatrix.from_dense(W, block)
        ref = W.astype(np.float64) @ X
        assert np.abs(sb.spmm(A, X) - ref).max() <= 1e-4 * np.abs(ref).max()
