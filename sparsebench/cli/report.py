"""`sparsebench report RESULTS_DIR --out OUT_DIR`.

Hook into the main parser with `add_parser(subparsers)`; `run(args)` returns the exit status:
0 when every result file was read, 1 when some were malformed (the report is still written
without them and names them).
"""
import os
import sys


def add_parser(subparsers):
    q = subparsers.add_parser("report", help="figures and tables (report.md, report.html) from a results folder",
                              description="Turn the compare CSVs, tuning database, tuned-config file and BERT "
                                          "results found in RESULTS_DIR into report.md, a self-contained "
                                          "report.html and figures (PNG and SVG).")
    q.add_argument("results_dir", metavar="RESULTS_DIR", nargs="?", default="results",
                   help="folder with compare-*.csv, tuning.jsonl, tuned.json, bert*.csv (default: results)")
    q.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/report)")
    q.set_defaults(func=run)
    return q


def run(args):
    from ..report.build import build_report

    out = args.out or os.path.join(args.results_dir, "report")
    summary = build_report(args.results_dir, out, log=lambda line: print(line, flush=True))
    print(f"report: {summary.markdown}, {summary.html} ({len(summary.figures)} figures, "
          f"{len(summary.skipped)} skipped)")
    if summary.errors:
        print(f"sparsebench report: {len(summary.errors)} input file(s) could not be read and were left out: "
              + ", ".join(path for path, _ in summary.errors), file=sys.stderr)
        return 1
    return 0
