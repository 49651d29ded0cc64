"""`sparsebench compare`: every method on every shape x sparsity x block, side by side.

For each case the methods are prepared on the same pruned W and X, each result is checked
against the float64 reference (a wrong result becomes a failed row, never a timing; int8
results against the exact product of their quantized operands, with max_rel_error their
deviation from the float32 result, i.e. the cost of quantization), then
the methods that passed are timed interleaved and each is reported as a ratio to dense
taken round by round, and as a percentage of the machine's measured peak (pct_peak: useful
GFLOP/s, or GOP/s against the int8 peak; see sparsebench.peak). A short peak probe runs before
and after every case: a case beside a probe more than 15% under the peak (or 25% under the copy
bandwidth) is measured again, up to peak.ATTEMPTS times in all, and marked degraded if no
attempt was clean. Rows are appended to the CSV as each case finishes, so an interrupted
run keeps what it measured and a re-run measures only the cases this build has not measured on
this machine with the kernel configs it would run now (rows it measures again move to an archive
beside the CSV).
"""
import csv
import datetime
import io
import os
import time

from threadpoolctl import threadpool_limits

from .. import __version__, fingerprint, store
from . import baselines
from ..bsr import BSRMatrix
from ..dtypes import check_dtype, reference, sparse_matrix
from ..machine import cpu_label
from ..peak import DEGRADED_BELOW, PeakMonitor
from ..prune import prune
from .problems import problem_arrays
from .timing import interleaved, ratio
from .verify import Reference

FIELDS = ["shape", "M", "K", "N", "block", "sparsity", "dtype", "threads", "cache", "method", "status",
          "reason", "median_ms", "p20_ms", "p80_ms", "min_ms", "spread", "unstable", "samples", "loops",
          "gflops", "effective_gflops", "speedup", "speedup_p20", "speedup_p80", "max_rel_error",
          "config", "library", "cpu", "hardware_id", "build_id", "sparsebench", "timestamp"]
#: columns of the measured peak; files written before them have the header without them.
#: peak_gflops is the peak pct_peak refers to (GOP/s for int8 rows), probe_gflops the lower of
#: the fp32 probes before and after the case
PEAK_FIELDS = ["pct_peak", "peak_gflops", "probe_gflops", "degraded"]
#: this method's time over the `sparsebench` method's, per interleaved round: median, p20, p80
#: (token-major over feature-major; our float32 kernels over our int8 ones in int8 runs)
RATIO_FIELDS = ["vs_sparsebench", "vs_sparsebench_p20", "vs_sparsebench_p80"]
#: headers of earlier versions, each a prefix of FIELDS: their rows read with the later columns empty
EARLIER_HEADERS = [list(FIELDS), FIELDS + PEAK_FIELDS]
FIELDS = FIELDS + PEAK_FIELDS + RATIO_FIELDS
#: methods that compute the whole dense product (their useful work is 2*M*K*N)
DENSE_METHODS = ("dense", "sparsebench-dense")
KEY = ("shape", "M", "K", "N", "block", "sparsity", "dtype", "threads", "cache")


def case_key(shape, block, sparsity, threads, cache, dtype="float32"):
    return (shape.name, str(shape.M), str(shape.K), str(shape.N), "%dx%d" % block,
            f"{sparsity:g}", dtype, str(threads), cache)


def read_rows(path):
    """Rows of a compare CSV, of this version's header or an earlier one (whose missing columns
    come back empty)."""
    lines = store.read_lines(path)
    if not lines:
        return []
    rows = list(csv.reader(lines))
    if rows[0] != FIELDS and rows[0] not in EARLIER_HEADERS:
        raise store.StoreError(f"{path} is not a compare results file of this sparsebench version "
                               "(header differs); pass another --out or --rerun to start it afresh")
    return [dict(dict.fromkeys(FIELDS, ""), **dict(zip(rows[0], r))) for r in rows[1:] if len(r) == len(rows[0])]


def _upgrade_header(path):
    """Rewrite a compare CSV of an earlier header with this version's, so rows can be appended
    to it (under the file's lock; a line that is not a row of the old header is kept as it is)."""
    def upgrade(lines):
        old = next(csv.reader(lines[:1]), None)
        if old not in EARLIER_HEADERS:
            return None
        out = [",".join(FIELDS)]
        for line in lines[1:]:
            fields = next(csv.reader([line]), [])
            out.append(_csv_line(dict(zip(old, fields))) if len(fields) == len(old) else line)
        return out
    try:
        with open(path, newline="") as f:
            first = next(csv.reader([f.readline()]), None)
    except (OSError, UnicodeDecodeError):
        return                  # absent, or not a text file: read_rows says what is wrong
    if first in EARLIER_HEADERS:
        store.rewrite_lines(path, upgrade)


def archive_path(out):
    """Where Compare.run moves the rows of `out` it measures again: the CSV's name with
    "-archive.csv.gz" for ".csv" (compare-x.csv: compare-x-archive.csv.gz)."""
    return os.path.splitext(out)[0] + "-archive.csv.gz"


def _archive_rows(out, chosen):
    """Move the rows of `out` for which chosen(row) holds to archive_path(out) (store.move_lines:
    under the file's lock, atomic; each move a gzip member of CSV lines under `out`'s header)."""
    def choose(lines):
        names = next(csv.reader(lines[:1]), [])
        for i, line in enumerate(lines):          # a row a line (_csv_line writes no newlines)
            fields = next(csv.reader([line]), [])
            yield i > 0 and len(fields) == len(names) and chosen(
                dict(dict.fromkeys(FIELDS, ""), **dict(zip(names, fields))))
    return store.move_lines(out, choose, archive_path(out), header_lines=1)[0]


def _csv_line(row):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([_fmt(row.get(f, "")) for f in FIELDS])
    return buf.getvalue()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else " ".join(str(v).splitlines())     # a row a line


class Compare:
    """One compare run: methods x cases, results appended to `out` (None: kept in memory)."""

    def __init__(self, methods, threads, samples=30, cold=False, out=None, config_for=None,
                 log=print, progress=None, dtype="float32"):
        self.methods = [baselines.get(m) for m in methods]
        self.threads = threads
        self.dtype = check_dtype(dtype)
        self.samples = samples
        self.cache = "cold" if cold else "warm"
        self.out = out
        self.config_for = config_for          # (A, N, sparsity, layout) -> KernelConfig, "dense" or None
        self.log = log
        self.progress = progress or (lambda *a: None)
        self.skipped = set()
        self.monitor = PeakMonitor(threads)
        self.meta = {"cpu": cpu_label(), "hardware_id": fingerprint.hardware_id(),
                     "build_id": fingerprint.build_id(self.dtype), "sparsebench": __version__}

    def run(self, shapes, sparsities, blocks):
        """Measure every case. This machine's rows of `out` from this build count as done (an
        interrupted run resumes), unless one of our methods would now run another kernel config
        than its row names (a re-tune since). Its rows of the cases measured again (another
        build, another config, a row without a machine id, or only some methods) move to the
        archive beside `out` (archive_path) first, so the file holds one measurement per case and
        method; other machines' rows stay in `out`, neither counted nor returned."""
        here, build = self.meta["hardware_id"], self.meta["build_id"]
        rows = []
        if self.out:
            _upgrade_header(self.out)
            rows = read_rows(self.out)

        def ours(r):                     # this machine's (a row without a machine id: an older file's)
            return r["hardware_id"] in (here, "")

        def measured_again(r):
            return ours(r) and (tuple(r[k] for k in KEY), r["method"]) in again

        done = {(tuple(r[k] for k in KEY), r["method"]): r["config"] for r in rows
                if ours(r) and r["build_id"] == build}
        wanted = [m.name for m in self.methods]
        cases = [(sh, b, s) for sh in shapes for b in blocks for s in sparsities]

        def measured(case):
            key = case_key(case[0], case[1], case[2], self.threads, self.cache, self.dtype)
            if not all((key, m) in done for m in wanted):
                return False
            configs = self.configs_now(*case)
            stale = [m for m, c in configs.items() if c and done[key, m] not in ("", c)]
            if stale:
                self.log(f"{case[0].name} {case[0]} {case[1][0]}x{case[1][1]} {case[2]:g}: measuring again, "
                         f"{', '.join(stale)} now runs {', '.join(configs[m] for m in stale)}")
            return not stale

        todo = [c for c in cases if not measured(c)]
        if len(todo) < len(cases):
            self.log(f"resuming {self.out}: {len(cases) - len(todo)} of {len(cases)} cases already measured")
        again = {(case_key(c[0], c[1], c[2], self.threads, self.cache, self.dtype), m) for c in todo for m in wanted}
        if self.out and any(map(measured_again, rows)):
            moved = _archive_rows(self.out, measured_again)
            self.log(f"{self.out}: {moved} rows of this machine from another build (or of cases measured "
                     f"again) moved to {archive_path(self.out)}")
            rows = read_rows(self.out)
        with threadpool_limits(self.threads):
            for i, (shape, block, sparsity) in enumerate(todo):
                label = f"{shape.name} {shape} {block[0]}x{block[1]} {sparsity:g}"
                self.progress(i, len(todo), label)
                new = self.measure_case(shape, block, sparsity, label)
                if self.out:
                    store.append_lines(self.out, [_csv_line(r) for r in new], header=",".join(FIELDS))
                rows += new
                self.progress(i + 1, len(todo), "")      # clear the live line
                self.log(format_case(new))
        rows = [r for r in rows if ours(r)]                     # this machine's
        degraded = {(r["shape"], r["block"], r["sparsity"]) for r in rows if r.get("degraded") == "True"}
        if degraded:
            self.log(f"degraded: {len(degraded)} cases were measured while a peak probe ran more than "
                     f"{DEGRADED_BELOW:.0%} under the peak ({self.monitor.best:.0f} GFLOP/s; another "
                     "process or tenant on the cores), marked in the degraded column")
        return rows

    def measure_case(self, shape, block, sparsity, label):
        """run_case between two peak probes, again while a probe says the machine was degraded
        (PeakMonitor.until_clean); its rows with pct_peak, the probes and the degraded mark."""
        new, degraded, probes = self.monitor.until_clean(label, lambda: self.run_case(shape, block, sparsity),
                                                         log=self.log)
        probe = min(p["gflops"] for p in probes)
        for r in new:
            r.update(probe_gflops=_fmt(probe), degraded=str(degraded) if r["status"] == "ok" else "")
        return new

    def problem(self, shape, block, sparsity):
        """The case's baselines.Problem: W pruned, X, and the configs our methods are given."""
        W, X = problem_arrays(shape)
        Wp = prune(W, sparsity, block)
        A = BSRMatrix.from_dense(Wp, block)
        Aq = sparse_matrix(Wp, block, "int8") if self.dtype == "int8" else None
        choose = self.config_for or (lambda A, n, s, layout="features": None)
        fp32_config = choose(A, shape.N, sparsity)
        config = fp32_config if Aq is None else choose(Aq, shape.N, sparsity)
        tokens = any(isinstance(m, baselines.ours.SparsebenchTokens) for m in self.methods)
        tokens_config = choose(A if Aq is None else Aq, shape.N, sparsity, "tokens") if tokens else None
        return baselines.Problem(Wp, A, X, sparsity, self.threads, config, self.dtype, Aq, fp32_config,
                                 tokens_config)

    def configs_now(self, shape, block, sparsity):
        """{method: the kernel config it would run on the case, as its rows name it} for our methods."""
        methods = [m for m in self.methods if hasattr(m, "config_for")]
        if not methods:
            return {}
        prob = self.problem(shape, block, sparsity)
        configs = {}
        for m in methods:
            try:
                configs[m.name] = str(m.config_for(prob))
            except Exception:           # its rows say why (run_case records the error)
                configs[m.name] = ""
        return configs

    def run_case(self, shape, block, sparsity):
        prob = self.problem(shape, block, sparsity)
        Wp, A, X, Aq = prob.W, prob.A, prob.X, prob.Aq
        refs = {"float32": Reference(Wp, X)}
        if Aq is not None:
            refs["int8"] = reference(Aq, Wp, X, self.threads)
        base = {"shape": shape.name, "M": shape.M, "K": shape.K, "N": shape.N, "block": "%dx%d" % block,
                "sparsity": f"{sparsity:g}", "dtype": self.dtype, "threads": self.threads,
                "cache": self.cache, "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
                **self.meta}
        rows, runners, dtypes = {}, {}, {}
        for method in self.methods:
            row = dict(base, method=method.name, library=_version(method))
            try:
                if hasattr(method, "config_for"):   # also on a row that fails: resume compares it
                    row["config"] = str(method.config_for(prob))
                fn = method.prepare(prob)
                Y = fn()
                dtype = method.dtype(prob)
                dtypes[method.name] = dtype
                ok, gate_err = refs[dtype].check(Y)
                err = gate_err if dtype == "float32" else refs["float32"].check(Y)[1]
            except baselines.MethodUnavailable as e:
                row.update(status="skipped", reason=str(e))
                if (method.name, str(e)) not in self.skipped:
                    self.skipped.add((method.name, str(e)))
                    self.log(f"skipping {method.name}: {e}")
            except Exception as e:                      # a broken method must not stop the run
                row.update(status="error", reason=f"{type(e).__name__}: {e}")
            else:
                row.update(max_rel_error=err)
                if ok:
                    runners[method.name] = fn
                else:
                    row.update(status="wrong", reason=f"result differs from the float64 reference of its {dtype} "
                               f"operands beyond float32 rounding (max rel. error {gate_err:.2e})")
            rows[method.name] = row
        if runners:
            stats = interleaved(runners, samples=self.samples, cold=self.cache == "cold")
            useful = 2 * A.nnz * shape.N
            for name, st in stats.items():
                rows[name].update(status="ok", median_ms=st.median * 1e3, p20_ms=st.p20 * 1e3,
                                  p80_ms=st.p80 * 1e3, min_ms=st.min * 1e3, spread=st.spread,
                                  unstable=st.unstable, samples=st.n, loops=st.loops,
                                  gflops=shape.flops / st.median / 1e9,
                                  effective_gflops=useful / st.median / 1e9)
                dense = name in DENSE_METHODS or rows[name].get("config") == "dense"
                dtype = "float32" if dense else dtypes[name]
                rows[name].update(pct_peak=self.monitor.pct(shape.flops if dense else useful, st.median, dtype),
                                  peak_gflops=self.monitor.rate(dtype))
                if "dense" in stats:
                    sp = ratio(stats["dense"], st)
                    rows[name].update(speedup=sp.median, speedup_p20=sp.p20, speedup_p80=sp.p80)
                if "sparsebench" in stats and name != "sparsebench":
                    vs = ratio(st, stats["sparsebench"])
                    rows[name].update(vs_sparsebench=vs.median, vs_sparsebench_p20=vs.p20,
                                      vs_sparsebench_p80=vs.p80)
        return [{f: _fmt(r.get(f, "")) for f in FIELDS} for r in rows.values()]


def _version(method):
    try:
        return method.version()
    except Exception as e:          # a broken optional library must not stop the run
        return f"unknown ({type(e).__name__})"


def format_case(rows):
    """One line: the case and each method's time and speedup."""
    if not rows:
        return ""
    r0 = rows[0]
    parts = []
    for r in rows:
        if r["status"] == "ok":
            sp = f" {float(r['speedup']):.2f}x" if r.get("speedup") else ""
            parts.append(f"{r['method']} {float(r['median_ms']):.3f}ms{sp}{_peak_cell(r)}{_flags(r)}")
        elif r["status"] != "skipped":
            parts.append(f"{r['method']} {r['status'].upper()}")
    dims = f"{r0['M']}x{r0['K']}x{r0['N']}"
    name = dims if r0["shape"] == dims else f"{r0['shape']} {dims}"
    return f"{name} {r0['block']} {r0['sparsity']}: " + ", ".join(parts)


def _flags(row):
    """? unstable, ! degraded (measured while a peak probe ran slow)."""
    return ("?" if row["unstable"] == "True" else "") + ("!" if row.get("degraded") == "True" else "")


def _peak_cell(row):
    """' (12% peak)', or '' for rows without a peak (older files)."""
    return f" ({float(row['pct_peak']):.0f}%)" if row.get("pct_peak") else ""


def speedup_table(rows, methods):
    """Text table: speedup over dense and % of the measured peak per shape x sparsity x method."""
    header = ["shape", "MxKxN", "block", "sparsity"] + list(methods)
    lines = []
    seen = {}
    for r in rows:
        key = (r["shape"], f"{r['M']}x{r['K']}x{r['N']}", r["block"], r["sparsity"])
        seen.setdefault(key, {})[r["method"]] = r
    for key, by_method in seen.items():
        cells = list(key)
        for m in methods:
            r = by_method.get(m)
            if r is None or r["status"] == "skipped":
                cells.append("-")
            elif r["status"] != "ok":
                cells.append(r["status"].upper())
            elif r.get("speedup"):
                cells.append(f"{float(r['speedup']):.2f}x{_peak_cell(r)}{_flags(r)}")
            else:
                cells.append(f"{float(r['median_ms']):.3f}ms{_peak_cell(r)}{_flags(r)}")
        lines.append(cells)
    return format_table(header, lines)


def _pairs(rows, first, second):
    """{(shape, MxKxN, block, sparsity): (row of `first`, row of `second`)} where both ran."""
    by_case = {}
    for r in rows:
        if r["status"] == "ok" and r["method"] in (first, second):
            key = (r["shape"], f"{r['M']}x{r['K']}x{r['N']}", r["block"], r["sparsity"])
            by_case.setdefault(key, {})[r["method"]] = r
    return {key: (by[first], by[second]) for key, by in by_case.items() if len(by) == 2}


def _vs_sparsebench(row, base, other):
    """`row`'s time over the sparsebench method's: the per-round ratio, median (p20-p80), where
    the row has it; else the ratio of the medians (files written before the ratio columns)."""
    if row.get("vs_sparsebench"):
        return (f"{float(row['vs_sparsebench']):.2f} ({float(row['vs_sparsebench_p20']):.2f}-"
                f"{float(row['vs_sparsebench_p80']):.2f})")
    return f"{float(other['median_ms']) / float(base['median_ms']):.2f}"


def int8_table(rows):
    """Text table: our float32 kernel's time / our int8 kernel's time, per shape x sparsity."""
    lines = []
    for key, (fp32, int8) in _pairs(rows, "sparsebench-fp32", "sparsebench").items():
        a, b = float(fp32["median_ms"]), float(int8["median_ms"])
        lines.append(list(key) + [f"{a:.3f}", f"{b:.3f}", _vs_sparsebench(fp32, int8, fp32),
                                  f"{float(int8['max_rel_error']):.2%}"])
    return format_table(["shape", "MxKxN", "block", "sparsity", "fp32 ms", "int8 ms", "int8 speedup (p20-p80)",
                         "int8 error"], lines)


def layout_table(rows):
    """Text table: token-major time (sparsebench-tokens) / feature-major time (sparsebench)."""
    lines = []
    for key, (features, tokens) in _pairs(rows, "sparsebench", "sparsebench-tokens").items():
        a, b = float(features["median_ms"]), float(tokens["median_ms"])
        lines.append(list(key) + [f"{a:.3f}", f"{b:.3f}", _vs_sparsebench(tokens, features, tokens)])
    return format_table(["shape", "MxKxN", "block", "sparsity", "feature-major ms", "token-major ms",
                         "token / feature (p20-p80)"], lines)


def format_table(header, lines):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join("{:>%d}" % w for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] +
                     [fmt.format(*map(str, line)) for line in lines])


def tty_progress(stream):
    """A live 'measuring ...' line with an ETA on a terminal (text '' clears it); None when
    output is redirected (finished cases are logged as lines either way)."""
    if not stream.isatty():
        return None
    start = time.perf_counter()

    def progress(done, total, text):
        elapsed = time.perf_counter() - start
        eta = f", ~{elapsed / done * (total - done):.0f} s left" if done else ""
        width = os.get_terminal_size(stream.fileno()).columns - 1
        stream.write("\r\033[K" + (f"[{done}/{total}{eta}] measuring {text}"[:width] if text else ""))
        stream.flush()
    return progress
