"""The `sparsebench` command line: `main` is the console entry point."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
