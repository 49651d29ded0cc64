"""`torch`, `torch-csr`: PyTorch on the CPU, dense torch.mm and sparse CSR @ dense.

Optional: ``pip install "sparsebench[torch]"`` (the CPU build: ``pip install torch==2.13.0``).
W, X and Y are shared with numpy (torch.from_numpy), so nothing is copied per call.

torch's OpenMP runtime (its bundled libgomp) keeps idle threads spinning, without yielding,
for about 4 ms after each parallel region: that made numpy dense timed right after torch 2x
slower on 2 cores, and torch itself 300x slower whenever another process held a core.
sparsebench.idle_spin cuts that short before torch loads; version() says what is in effect.
"""
import warnings

import numpy as np

from ...errors import MethodUnavailable
from ...idle_spin import tame_torch_idle_spin
from .base import Baseline

INSTALL_HINT = 'pip install "sparsebench[torch]"'


def _torch():
    tame_torch_idle_spin()
    try:
        import torch
    except ImportError:
        raise MethodUnavailable(f"PyTorch is not installed: {INSTALL_HINT}") from None
    return torch


def _tensor(torch, a):
    """A torch view of a float32 numpy array (copied once only if numpy marks it read-only)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class Torch(Baseline):
    install_hint = INSTALL_HINT

    def __init__(self, fmt):
        self.fmt = fmt
        self.name = "torch" if fmt == "dense" else f"torch-{fmt}"
        self.description = ("torch.mm(W, X) (dense, torch's BLAS)" if fmt == "dense"
                            else "torch sparse_csr W @ X (torch.mm)")

    def version(self):
        try:
            torch = _torch()
        except MethodUnavailable:
            return "PyTorch not installed"
        backend = next((line.split(":", 1)[1].strip() for line in
                        torch.__config__.parallel_info().splitlines()
                        if line.startswith("ATen parallel backend")), "unknown")
        return f"torch {torch.__version__}, parallel backend {backend}, {tame_torch_idle_spin()}"

    def prepare(self, problem):
        torch = _torch()
        W = np.ascontiguousarray(problem.W, dtype=np.float32)
        X = problem.contiguous_X()
        Y = np.empty((W.shape[0], X.shape[1]), dtype=np.float32)
        Wt, Xt, Yt = _tensor(torch, W), _tensor(torch, X), torch.from_numpy(Y)
        if self.fmt == "csr":
            with warnings.catch_warnings():    # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                Wt = Wt.to_sparse_csr()
        threads = problem.threads
        torch.set_num_threads(threads)
        mm, get_threads, set_threads = torch.mm, torch.get_num_threads, torch.set_num_threads

        def run():
            if get_threads() != threads:    # another problem prepared since with other threads
                set_threads(threads)
            mm(Wt, Xt, out=Yt)
            return Y
        return run


BASELINES = [Torch("dense"), Torch("csr")]
