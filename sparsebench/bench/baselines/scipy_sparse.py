"""`scipy-csr`, `scipy-bsr`: scipy.sparse (single-threaded: scipy has no threaded SpMM)."""
from ...errors import MethodUnavailable
from .base import Baseline


def _scipy():
    try:
        import scipy.sparse
    except ImportError:
        raise MethodUnavailable("scipy is not installed: pip install scipy") from None
    return scipy.sparse


class ScipySparse(Baseline):
    install_hint = "pip install scipy"

    def __init__(self, fmt):
        self.fmt = fmt
        self.name = f"scipy-{fmt}"
        self.description = f"scipy.sparse {fmt}_array @ X (one thread)"

    def version(self):
        import scipy
        return f"scipy {scipy.__version__}"

    def prepare(self, problem):
        sp = _scipy()
        if self.fmt == "csr":
            S = sp.csr_array(problem.W)
        else:
            M, K = problem.W.shape
            br, bc = problem.block
            if M % br or K % bc:
                raise MethodUnavailable(f"scipy bsr needs M, K divisible by the block {br}x{bc}")
            S = sp.bsr_array(problem.W, blocksize=(br, bc))
        X = problem.contiguous_X()          # scipy would copy a padded X on every call
        return lambda: S @ X


BASELINES = [ScipySparse("csr"), ScipySparse("bsr")]
