"""Keep numpy's OpenBLAS from spinning on the cores our kernels need, whatever the import order.

After every call, OpenBLAS's pthreads workers keep polling for about 2**28 cycles (~0.1 s)
before they sleep, so a kernel called right after a numpy matmul finds its second core taken:
on 2 cores our 2-thread kernels then ran at 0.4-0.8x their speed (python -m
sparsebench.bench.plain). OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when it loads:
imported before numpy, sparsebench sets it (4: the workers sleep at once); imported after, while
no other Python thread runs, sparsebench sets it and has OpenBLAS read its environment again and
restart its worker pool
(its exported openblas_read_env and blas_thread_shutdown_, what its own fork handler runs),
which the next BLAS call starts afresh with the short timeout. SPARSEBENCH_TAME_BLAS=0 leaves
OpenBLAS alone; a user's own OPENBLAS_THREAD_TIMEOUT is always kept.
"""
import ctypes
import os
import sys
import threading

VAR, VALUE = "OPENBLAS_THREAD_TIMEOUT", "4"
ENV_SWITCH = "SPARSEBENCH_TAME_BLAS"


def before_numpy():
    """At import, before anything else: set the timeout if numpy (and its OpenBLAS) is not
    loaded yet. Returns whether numpy was loaded already."""
    loaded = "numpy" in sys.modules
    if not loaded and os.environ.get(ENV_SWITCH) != "0":
        os.environ.setdefault(VAR, VALUE)
    return loaded


def restart_loaded_openblas():
    """For each pthreads OpenBLAS already loaded (numpy came first): set the timeout, make it
    re-read its environment and restart its worker pool. Returns a note saying what is in effect.

    It must not run while another thread is inside a BLAS call (as with OpenBLAS's fork
    handler), so it runs only while this is the process's one thread: sparsebench calls it once,
    while it is being imported.
    """
    if os.environ.get(ENV_SWITCH) == "0":
        return f"left alone ({ENV_SWITCH}=0)"
    if os.environ.get(VAR, VALUE) != VALUE:
        return f"{VAR}={os.environ[VAR]} (user)"
    if threading.active_count() > 1 or threading.current_thread() is not threading.main_thread():
        return (f"not restarted: other threads were running when sparsebench was imported (import "
                f"sparsebench before numpy, or set {VAR}={VALUE}, to keep OpenBLAS's idle workers off our cores)")
    from threadpoolctl import threadpool_info

    restarted = []
    for pool in threadpool_info():
        if pool.get("internal_api") != "openblas" or pool.get("threading_layer") != "pthreads":
            continue
        try:
            lib = ctypes.CDLL(pool["filepath"], mode=os.RTLD_NOLOAD)
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
        except (OSError, AttributeError):
            continue
        os.environ[VAR] = VALUE
        read_env()
        shutdown()
        restarted.append(os.path.basename(pool["filepath"]))
    if not restarted:
        return "no pthreads OpenBLAS with a restartable pool loaded"
    return f"{VAR}={VALUE}, set after load: {', '.join(restarted)} re-read it and restarted its pool"
