"""argparse types shared by the sparsebench commands."""
import argparse

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
