"""The correctness gate: every result is checked against a float64 dense reference.

W and X are float32, so each product is exact in float64 and the float64 product is the
exact result for our purposes. Any float32 summation of K terms, in any order and with or
without FMA, is within gamma_K * (|W| @ |X|) elementwise (gamma_K ~ K * 2**-24); a result
that leaves that bound (with a factor 2 of slack for the final rounding) is wrong.
"""
import numpy as np

U32 = 2.0 ** -24


class Reference:
    """The exact W @ X and the elementwise error bound of a float32 computation of it."""

    def __init__(self, W, X, bias=None):
        W64, X64 = W.astype(np.float64), X.astype(np.float64)
        self.Y = W64 @ X64
        self.scale = np.abs(W64) @ np.abs(X64)
        if bias is not None:
            self.Y += bias.astype(np.float64)[:, None]
            self.scale += np.abs(bias.astype(np.float64))[:, None]
        self.bound = 2 * (W.shape[1] + 2) * U32 * self.scale

    def check(self, Y):
        """(ok, error): error is max |Y - ref| relative to max |ref| (for reports); ok means every
        element is within the float32 bound and the shape and dtype are right."""
        Y = np.asarray(Y)
        if Y.shape != self.Y.shape:
            return False, float("inf")
        diff = np.abs(Y.astype(np.float64) - self.Y)
        ok = bool(np.all(diff <= self.bound)) and Y.dtype == np.float32
        top = float(np.abs(self.Y).max()) if self.Y.size else 0.0
        err = float(diff.max()) / top if diff.size and top > 0 else (0.0 if ok else float("inf"))
        return ok, err
