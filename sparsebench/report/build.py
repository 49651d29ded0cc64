"""`build_report`: read a results folder, draw the figures, write report.md and report.html.

A folder of several machines' results (results/ holds one folder per CPU, results/<cpu>/) gets
a part per machine, its figures in figures/<machine>/; no figure or table mixes two machines,
and every title says which CPU it comes from."""
import dataclasses
import datetime
import os

from .. import __version__, fingerprint
from ..peak import DEGRADED
from . import analysis, tables
from .document import Bullets, Heading, Image, Para, Table, to_html, to_markdown, write
from .figures import make_figures
from .load import load_results

TITLE = "sparsebench performance report"


@dataclasses.dataclass
class ReportSummary:
    """What a build made and what it could not."""

    markdown: str                 # path of report.md
    html: str                     # path of report.html
    figures: list                 # PNG paths (each has an .svg beside it)
    skipped: dict                 # figure title -> why it was not drawn
    errors: list                  # (path, message) of malformed input files
    notes: list                   # rows or records dropped from otherwise good files

    @property
    def ok(self):
        """True when every result file could be read."""
        return not self.errors


def build_report(results_dir, out_dir, log=print):
    """Write `out_dir`/report.md, report.html and figures/*.png|svg from the files in `results_dir`.

    Figures that the inputs do not allow are skipped with the reason; a malformed input file
    is named in the report (and in `errors`) while everything else is still built. Raises
    ReportError only when the folder itself cannot be read."""
    inputs = load_results(results_dir)
    for s in inputs.sources:
        log(f"read {s.path}: {s.kind}, {s.count} {s.unit}")
    for path, message in inputs.errors:
        log(f"error: {message}")
    for note in inputs.notes:
        log(f"note: {note}")
    os.makedirs(out_dir, exist_ok=True)
    groups = analysis.machines(inputs) or [("", None)]
    parts, figures = [], []
    for hardware_id, label in groups:
        sub = analysis.for_machine(inputs, hardware_id) if len(groups) > 1 else inputs
        fig_dir = os.path.join(out_dir, "figures", *([analysis.machine_slug(label)] if len(groups) > 1 else []))
        made, skipped = make_figures(sub, fig_dir, log, machine=label)
        parts.append((label, _machine_part(sub, made, skipped, label, several=len(groups) > 1)))
        figures += [f.png for files in made.values() for f in files]
    blocks = _document(inputs, parts)
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    write(md_path, to_markdown(blocks, out_dir))
    write(html_path, to_html(blocks, TITLE))
    log(f"wrote {md_path} and {html_path}")
    return ReportSummary(md_path, html_path, figures, skipped, inputs.errors, inputs.notes)


def _images(files):
    return [Image(f.title, f.caption, f.png, f.svg) for f in files]


def _figure_or_skip(made, skipped, title):
    """The figure blocks of `title`, or a paragraph saying why it was skipped."""
    if title in made:
        return _images(made[title])
    return [Para(f"Figure skipped: {skipped[title]}.")]


def _document(inputs, parts):
    now = datetime.datetime.now().isoformat(timespec="seconds")
    machines = "; ".join(label or analysis.UNKNOWN_MACHINE for label, _ in parts)
    blocks = [Heading(1, TITLE),
              Para(f"Built {now} by sparsebench {__version__} from `{os.path.abspath(inputs.results_dir)}` "
                   "(`sparsebench report`). Medians are shown with their p20–p80 spread; ? marks an unstable "
                   "measurement (p20–p80 spread ≥ 10% of the median). "
                   f"Machines: {machines}" + (", each in a part of its own." if len(parts) > 1 else "."))]
    for _, part in parts:
        blocks += part
    return blocks


def _machine_part(inputs, made, skipped, label, several):
    """The sections of one machine's results, every table and figure title naming its CPU."""
    blocks = [Heading(1, f"Machine: {label}")] if several else []
    blocks += _summary(inputs, made, skipped)
    blocks += _compare_sections(inputs, made, skipped)
    blocks += _tuning_sections(inputs, made, skipped)
    blocks += _bert_section(inputs, made, skipped)
    blocks += _metadata_section(inputs)
    if label:
        blocks = [dataclasses.replace(b, caption=f"{b.caption} CPU: {label}.".strip())
                  if isinstance(b, Table) else b for b in blocks]
    return blocks


def _summary(inputs, made, skipped):
    out = [Heading(2, "Summary")]
    figures = [f.name for files in made.values() for f in files]
    items = [f"Figures made: {', '.join(figures) if figures else 'none'}."]
    items += [f"Figure skipped — {title}: {reason}." for title, reason in skipped.items()]
    out.append(Bullets(items))
    if inputs.errors:
        out.append(Heading(3, "Problems"))
        out.append(Para("These files could not be read; the rest of the report is built without them:"))
        out.append(Bullets([message for _, message in inputs.errors]))
    for suffix, label, rows in analysis.conditions(inputs.compare):
        header, rows_ = tables.headline_table(rows)
        if rows_:
            out.append(Heading(3, f"Headline: speedup over dense ({label})"))
            out.append(Table(header, rows_, f"Speedup over dense per method and block, median over the "
                             f"{len(analysis.shapes_in_order(rows))} shapes (min–max over shapes); {label}."))
    out.append(Heading(3, "Inputs"))
    if inputs.sources or inputs.errors:
        out.append(Table(*tables.inputs_table(inputs)))
    else:
        out.append(Para(f"No result files found in `{inputs.results_dir}` (expected compare-*.csv, "
                        "tuning.jsonl, tuned.json or bert*.csv)."))
    if inputs.notes:
        out.append(Para("Notes while reading:"))
        out.append(Bullets(inputs.notes))
    if inputs.ignored:
        out.append(Para("Files not used:"))
        out.append(Bullets([f"`{os.path.relpath(p, inputs.results_dir)}`: {why}" for p, why in inputs.ignored]))
    return out


SPEEDUP, GFLOPS = "Speedup over dense vs sparsity", "Effective GFLOP/s vs measured peak"


def _condition_figure(made, skipped, title, name):
    """The figure `name` of a compare condition, or why there is none."""
    for f in made.get(title, []):
        if f.name == name:
            return _images([f])
    return [Para(f"Figure skipped: {skipped.get(title, 'no data for it in this condition')}.")]


def _compare_sections(inputs, made, skipped):
    compare = inputs.compare
    if not len(compare):
        return [Heading(2, "Speedup over dense"), Para(f"Figure skipped: {skipped[SPEEDUP]}."),
                Heading(2, "Effective GFLOP/s against the measured peak"),
                Para(f"Figure skipped: {skipped[GFLOPS]}.")]
    conds = analysis.conditions(compare)
    out = [Heading(2, "Speedup over dense")]
    for suffix, label, rows in conds:
        if len(conds) > 1:
            out.append(Heading(3, label))
        out += _condition_figure(made, skipped, SPEEDUP, f"speedup{suffix}")
        out.append(Table(*tables.speedup_table(rows),
                         f"Speedup over dense, median (p20–p80) of per-round ratios; {label}."))
    out.append(Heading(2, "Effective GFLOP/s against the measured peak"))
    for suffix, label, rows in conds:
        if len(conds) > 1:
            out.append(Heading(3, label))
        out += _condition_figure(made, skipped, GFLOPS, f"gflops{suffix}")
        peak, what = analysis.roofline_peak(rows)
        share = f"percentage of the peak: {what}, {peak:.4g} GFLOP/s" if peak else what
        out.append(Table(*tables.gflops_table(rows, peak),
                         f"Useful GFLOP/s (2·nnz·N per second), with the {share}; ! = degraded (measured "
                         f"while {DEGRADED}); {label}."))
    header, failed = tables.failures_table(compare)
    if failed:
        out += [Heading(3, "Failed measurements"), Table(header, failed)]
    skipped_methods = tables.skipped_methods(compare)
    if skipped_methods:
        out.append(Para("Methods that could not run: " + "; ".join(f"{m} ({why})" for m, why in skipped_methods)
                        + "."))
    return out


def _tuning_sections(inputs, made, skipped):
    out = [Heading(2, "Autotuning")]
    choices, source = analysis.tuned_choices(inputs)
    out += _figure_or_skip(made, skipped, "Tuned kernel parameters")
    out += _figure_or_skip(made, skipped, "Tuned vs default heuristic")
    if len(choices):
        out.append(Table(*tables.tuned_table(choices),
                         f"Best choice per task (source: {source}); times re-measured side by side with dense "
                         "and the default heuristic at the end of each tuning run."))
    out.append(Heading(3, "Convergence"))
    out += _figure_or_skip(made, skipped, "Autotuning convergence")
    conv = analysis.convergence(inputs)
    if len(conv):
        out.append(Table(*tables.convergence_table(conv),
                         "Evaluations = sparse configs measured; 'best' = the fastest time any strategy "
                         "measured for the task."))
    counts = tables.measurement_counts(inputs.measurements)
    if counts:
        out.append(Para(counts))
    return out


def _bert_section(inputs, made, skipped):
    out = [Heading(2, "BERT end to end")]
    out += _figure_or_skip(made, skipped, "BERT end-to-end latency and throughput")
    if len(inputs.bert):
        out.append(Table(*tables.bert_table(inputs.bert), "Latency per forward pass; ? = unstable."))
    if len(inputs.budget):
        out.append(Table(*tables.budget_table(inputs.budget),
                         "Throughput under a latency budget (`sparsebench bert --latency-budget`): streams are "
                         "engines serving at once, each in its own process on threads/streams threads; a request "
                         "is a batch; best = the most sequences/s whose p90 latency fits."))
    out += _figure_or_skip(made, skipped, "BERT per-op breakdown")
    if len(inputs.breakdown):
        out.append(Table(*tables.breakdown_table(inputs.breakdown),
                         "Milliseconds per forward pass in each op category (share of the pass)."))
    return out


def _metadata_section(inputs):
    out = [Heading(2, "Machine and libraries"),
           Heading(3, "Where the results were measured"),
           Table(["", "value"], [list(f) for f in tables.measured_metadata(inputs)])]
    hardware_ids = set(inputs.compare["hardware_id"]) | set(inputs.tuning_results.get("hardware_id", [])) | {
        h["hardware_id"] for h in inputs.tuned_headers}
    out.append(Heading(3, "Machine that built this report (`sparsebench info`)"))
    try:
        from ..cli.info import collect
        facts = tables.this_machine(collect(), hardware_ids, fingerprint.hardware_id())
    except Exception as e:           # a broken kernel build must not stop the report
        return out + [Para(f"Not available: {type(e).__name__}: {e}")]
    return out + [Table(["", "value"], [list(f) for f in facts])]
