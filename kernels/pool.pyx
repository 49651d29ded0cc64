# cython: language_level=3
"""The one thread pool of every sparsebench kernel module (kernels/pool_impl.h).

Kernel modules reach it through the PyCapsule `_C_API` (kernels/pool.h); from Python, only its
spin setting and its worker count are visible.
"""
from cpython.pycapsule cimport PyCapsule_New

cdef extern from "pool_impl.h":
    ctypedef struct sb_pool_api_t:
        pass
    const sb_pool_api_t sb_pool_table
    const char *SB_POOL_CAPSULE
    int SB_POOL_DEFAULT_SPIN_US
    void sb_pool_set_spin_ns(long ns) nogil
    long sb_pool_spin_ns() nogil
    int sb_pool_workers() nogil

_C_API = PyCapsule_New(<void *>&sb_pool_table, SB_POOL_CAPSULE, NULL)
#: microseconds idle workers keep yielding before they sleep, unless set_spin_us says otherwise
DEFAULT_SPIN_US = SB_POOL_DEFAULT_SPIN_US


#: the longest spin set_spin_us accepts (an hour), so that microseconds x 1000 fits a C long
MAX_SPIN_US = 3600 * 10 ** 6


def set_spin_us(long us):
    """How long idle worker threads keep yielding (ready at once) before they sleep, for every
    kernel module of the process (negative: 0; at most MAX_SPIN_US)."""
    sb_pool_set_spin_ns(min(max(us, 0), MAX_SPIN_US) * 1000)


def spin_us():
    """The current spin setting, in microseconds."""
    return sb_pool_spin_ns() // 1000


def workers():
    """Worker threads started so far (a job runs on them and on its calling thread)."""
    return sb_pool_workers()
