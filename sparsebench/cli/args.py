"""argparse types shared by the sparsebench commands."""
import argparse
import re

from ..blocks import parse_block
from ..prune import check_sparsity


def floats(text):
    """'0.7,0.8' -> sparsities, each checked to lie in [0, 1)."""
    try:
        return [check_sparsity(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def blocks(text):
    """'4x1,1x1' -> block shapes."""
    try:
        return [parse_block(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text):
    """A positive integer."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def block(text):
    """'4x1' -> one block shape."""
    try:
        return parse_block(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: seconds per unit of a duration
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text):
    """'500us', '20ms', '90s', '10m', '1.5h' -> seconds. The unit is required: a bare number
    would mean seconds to one reader and milliseconds to another."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s|m|h)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration with its unit (us, ms, s, m or h), such as 20ms or 10m, "
            f"got {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def ray_address(text):
    """--ray ADDRESS: 'auto', host:port or ray://host:port (checked, not yet connected)."""
    from ..tune.ray_runner import check_address
    try:
        return check_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
