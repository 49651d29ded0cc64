"""Keep the idle threads of other OpenMP runtimes off the cores our kernels need.

An OpenMP runtime reads its spin settings once, when it loads: PyTorch's bundled libgomp keeps
idle threads spinning, without yielding, for about 4 ms after each parallel region (GOMP's
default spin count), MKL's libiomp5 for 200 ms (KMP_BLOCKTIME). Unless the user chose, we set a
short setting before the runtime loads; loaded first, it keeps its own, and the note says so.
"""
import ctypes
import functools
import os

#: busy-wait iterations of idle libgomp threads before they sleep (~15 ns each on Zen 4, about
#: 15 us): enough to bridge back-to-back torch calls (0 made torch's own multiplies 1.5-3x slower)
IDLE_SPINCOUNT = "1000"
TORCH_SPIN_NOTE = "idle torch threads spin for about 4 ms after each call"


def library_loaded(soname):
    """Whether this process has already loaded the shared library `soname`."""
    try:
        ctypes.CDLL(soname, mode=os.RTLD_NOLOAD)
    except OSError:
        return False
    return True


#: in a note of tame_idle_spin: the runtime had loaded with its own spinning
LOADED_FIRST = "was loaded before sparsebench could set"


def tame_idle_spin(var, value, soname, spin_note):
    """Set `var`=`value` in the environment before `soname` (an OpenMP runtime) loads, unless the
    user chose `var` or OMP_WAIT_POLICY; return a note saying what is in effect."""
    for v in (var, "OMP_WAIT_POLICY"):
        if v in os.environ:
            return f"{v}={os.environ[v]} (user)"
    if library_loaded(soname):
        return f"{soname} {LOADED_FIRST} {var}: {spin_note}"
    os.environ[var] = value
    return f"{var}={value} (set by sparsebench)"


@functools.lru_cache(maxsize=None)
def tame_torch_idle_spin():
    """GOMP_SPINCOUNT, once, before PyTorch's libgomp loads; the note of tame_idle_spin."""
    return tame_idle_spin("GOMP_SPINCOUNT", IDLE_SPINCOUNT, "libgomp.so.1", TORCH_SPIN_NOTE)
