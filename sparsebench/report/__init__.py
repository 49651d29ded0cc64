"""`sparsebench report`: figures and tables of compare, autotune and BERT results.

    from sparsebench.report import build_report
    summary = build_report("results", "results/report")
"""
from .build import ReportSummary, build_report
from .load import ReportError

__all__ = ["ReportError", "ReportSummary", "build_report"]
