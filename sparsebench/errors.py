"""Exceptions sparsebench raises; each message says what is wrong and how to fix it."""


class SparsebenchError(Exception):
    """Base class of every sparsebench error."""


class ConfigError(SparsebenchError, ValueError):
    """A KernelConfig that cannot run for this matrix and N (the message gives the reason)."""


class UnsupportedISAError(ConfigError, RuntimeError):
    """A kernel variant needs instructions this CPU (or this build) does not have."""


class MethodUnavailable(SparsebenchError):
    """A method (a baseline, a runtime) cannot run here (package missing) or cannot run this
    problem; the message is one line saying why, with an install hint where one helps."""
