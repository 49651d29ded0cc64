"""The report's figures, drawn with matplotlib on an Agg canvas (no pyplot, no global backend
change) and saved as PNG and SVG.

Each builder takes the Inputs and returns [(name, title, caption, Figure)], or raises Skip
saying why it cannot be drawn from these inputs.
"""
import dataclasses
import math
import os

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from . import analysis

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8.5,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linewidth": 0.6, "svg.hashsalt": "sparsebench-report", "figure.dpi": 100}
PNG_DPI = 130
#: line colours; no red, which marks unstable points and the dense peak
PALETTE = ("#1f77b4", "#000000", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2",
           "#bcbd22", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")
UNSTABLE = dict(s=110, facecolors="none", edgecolors="#e41a1c", linewidths=1.5, zorder=6)
#: ratios above which an axis goes logarithmic
LOG_SPAN = 10


class Skip(Exception):
    """This figure cannot be drawn from the inputs; the message says why."""


@dataclasses.dataclass
class FigureFile:
    name: str
    title: str
    caption: str
    png: str
    svg: str


# -- helpers ------------------------------------------------------------------------------------

def _figure(width, height):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panels(fig, n, ncols=3):
    """n axes in a grid of at most `ncols` columns, sharing x and y."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:n]):
        ax.tick_params(labelbottom=i + ncols >= n, labelleft=i % ncols == 0)
    return list(axes[:n]), ncols


def _colors(keys):
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _span(values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    return v.max() / v.min() if len(v) else 1.0


def _times_formatter(unit="×"):
    return ticker.FuncFormatter(lambda v, _: f"{v:g}{unit}")


def _125_bounds(values):
    """The 1-2-5 numbers just below and above the positive finite `values` (log axis limits)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0])
    steps = np.array([1, 2, 5, 10])
    lo, hi = v.min() * 0.95, v.max() * 1.05
    lo_unit, hi_unit = 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.floor(math.log10(hi))
    return lo_unit * steps[steps * lo_unit <= lo].max(), hi_unit * steps[steps * hi_unit >= hi].min()


def _set_scale(ax, values, unit=""):
    """Log scale (1-2-5 ticks, limits on 1-2-5 numbers) when `values` span more than LOG_SPAN,
    else linear from 0."""
    if _span(values) > LOG_SPAN:
        ax.set_yscale("log")
        ax.set_ylim(*_125_bounds(values))
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_minor_locator(ticker.LogLocator(subs=np.arange(1, 10)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(_times_formatter(unit))


def _sparsity_axis(ax, sparsities):
    ticks = sorted(set(float(s) * 100 for s in sparsities))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    pad = max(2.0, (ticks[-1] - ticks[0]) * 0.06) if ticks else 2
    ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)


def _outside_legend(fig, handles, max_cols=4, col_width=2.6):
    """A legend under the panels, with as many columns as the figure width allows."""
    ncol = max(1, min(max_cols, len(handles), int(fig.get_figwidth() // col_width)))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)


def _method_block_handles(methods, colors, blocks, markers):
    handles = [Line2D([], [], color=colors[m], marker="o", label=m) for m in methods]
    if len(blocks) > 1:
        handles += [Line2D([], [], color="0.35", linestyle=LINESTYLES[i % len(LINESTYLES)],
                           marker=markers[b], label=f"block {b}") for i, b in enumerate(blocks)]
    return handles


def _unread(inputs, *kinds):
    """' (NAME could not be read, see Problems)' when files of these kinds were malformed."""
    names = [os.path.basename(p) for k in kinds for p in inputs.unreadable.get(k, [])]
    return f" ({', '.join(names)} could not be read, see Problems)" if names else ""


def _need_compare(inputs):
    if not len(inputs.compare):
        raise Skip("no compare results (compare-*.csv from `sparsebench compare`) in the folder"
                   + _unread(inputs, "compare"))
    ok = inputs.compare[inputs.compare["status"] == "ok"]
    if not len(ok):
        raise Skip("the compare results hold no successful (status ok) measurement")
    return ok


# -- speedup over dense ------------------------------------------------------------------------

def speedup_figures(inputs):
    """Speedup over dense vs sparsity: a panel per shape, a line per method (and block)."""
    ok = _need_compare(inputs)
    ok = ok[ok["speedup"].notna()]
    if not len(ok):
        raise Skip("no speedups: dense was not measured alongside the other methods (add --methods dense)")
    out = []
    for suffix, label, rows in analysis.conditions(ok):
        rows = rows[rows["method"] != "dense"]
        if not len(rows):
            continue
        methods = analysis.ordered_methods(rows["method"])
        colors = _colors(analysis.ordered_methods(ok["method"]))
        blocks = list(dict.fromkeys(rows["block"]))
        markers = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(blocks)}
        shapes = analysis.shapes_in_order(rows)
        fig = _figure(*_grid_size(len(shapes)))
        axes, ncols = _panels(fig, len(shapes))
        values = list(rows["speedup_p20"]) + list(rows["speedup_p80"]) + list(1 / (1 - rows["sparsity"]))
        for ax, (shape, M, K, N) in zip(axes, shapes):
            sub = rows[(rows["shape"] == shape) & (rows["M"] == M) & (rows["K"] == K) & (rows["N"] == N)]
            spars = np.array(sorted(set(rows["sparsity"])))
            grid = np.linspace(spars.min(), spars.max(), 50)
            ax.plot(grid * 100, 1 / (1 - grid), color="0.8", linewidth=4, solid_capstyle="butt", zorder=0)
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0, zorder=1)
            for m in methods:
                for i, b in enumerate(blocks):
                    d = sub[(sub["method"] == m) & (sub["block"] == b)].sort_values("sparsity")
                    if not len(d):
                        continue
                    x, y = d["sparsity"] * 100, d["speedup"]
                    err = [np.clip(y - d["speedup_p20"], 0, None), np.clip(d["speedup_p80"] - y, 0, None)]
                    ax.errorbar(x, y, yerr=err, color=colors[m], marker=markers[b], markersize=4,
                                linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.4, capsize=2.5, zorder=3)
                    uns = d[d["unstable"]]
                    ax.scatter(uns["sparsity"] * 100, uns["speedup"], **UNSTABLE)
            ax.set_title(analysis.shape_label(shape, M, K, N))
            _sparsity_axis(ax, spars)
        for i, ax in enumerate(axes):
            _set_scale(ax, values, "×")
            if i % ncols == 0:
                ax.set_ylabel("speedup over dense (×)")
            if i + ncols >= len(axes):
                ax.set_xlabel("sparsity (%)")
        handles = _method_block_handles(methods, colors, blocks, markers) + [
            Line2D([], [], color="black", linestyle="--", label="dense = 1×"),
            Line2D([], [], color="0.8", linewidth=4, label="1/(1−sparsity) (dense FLOP rate)"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="#e41a1c",
                   markersize=9, label="unstable (spread ≥ 10%)")]
        _outside_legend(fig, handles)
        fig.suptitle(f"Speedup over dense (numpy W @ X) vs sparsity — {label}")
        dense_lib = _libraries(ok, "dense")
        c = inputs.compare
        failed = c[c["status"].isin(["wrong", "error"]) & (c["threads"] == rows["threads"].iloc[0])
                   & (c["cache"] == rows["cache"].iloc[0])]
        caption = (f"Median of per-round time ratios dense/method ({label}); error bars p20–p80 of those "
                   "ratios; red rings mark unstable measurements. Dense: " + (dense_lib or "numpy") + "."
                   + (f" {len(failed)} failed measurements (wrong result or error) are not plotted; see "
                      "Failed measurements." if len(failed) else ""))
        out.append((f"speedup{suffix}", f"Speedup over dense vs sparsity ({label})", caption, fig))
    if not out:
        raise Skip("the compare results hold only dense measurements")
    return out


def _libraries(rows, method):
    libs = rows[rows["method"] == method]["library"].dropna().unique()
    return "; ".join(sorted(str(x) for x in libs if x))


def _grid_size(n, ncols=3, panel=(3.6, 2.8), legend=1.1):
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    return max(6.0, panel[0] * ncols + 0.6), panel[1] * nrows + legend + 0.4


# -- effective GFLOP/s vs the dense peak -------------------------------------------------------

def gflops_figures(inputs):
    """Useful GFLOP/s per method against the machine's measured peak (roofline-style), or the
    highest dense rate measured when the results carry no peak."""
    ok = _need_compare(inputs)
    ok = ok[ok["effective_gflops"].notna()]
    out = []
    for suffix, label, rows in analysis.conditions(ok):
        peak, what = analysis.roofline_peak(rows)
        if peak is None:
            continue
        methods = analysis.ordered_methods(rows["method"])
        colors = _colors(analysis.ordered_methods(ok["method"]))
        blocks = list(dict.fromkeys(rows["block"]))
        markers = {b: MARKERS[i % len(MARKERS)] for i, b in enumerate(blocks)}
        shapes = analysis.shapes_in_order(rows)
        fig = _figure(*_grid_size(len(shapes)))
        axes, ncols = _panels(fig, len(shapes))
        # time quantiles -> rate quantiles: the slow p80 time gives the low rate
        lo = rows["effective_gflops"] * rows["median_ms"] / rows["p80_ms"]
        hi = rows["effective_gflops"] * rows["median_ms"] / rows["p20_ms"]
        values = list(lo) + list(hi) + [peak]
        for ax, (shape, M, K, N) in zip(axes, shapes):
            sel = (rows["shape"] == shape) & (rows["M"] == M) & (rows["K"] == K) & (rows["N"] == N)
            ax.axhline(peak, color="#e41a1c", linewidth=1.2, zorder=1)
            for m in methods:
                for i, b in enumerate(blocks):
                    s = sel & (rows["method"] == m) & (rows["block"] == b)
                    d = rows[s].sort_values("sparsity")
                    if not len(d):
                        continue
                    y = d["effective_gflops"]
                    err = [np.clip(y - lo[d.index], 0, None), np.clip(hi[d.index] - y, 0, None)]
                    ax.errorbar(d["sparsity"] * 100, y, yerr=err, color=colors[m], marker=markers[b],
                                markersize=4, linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.4,
                                capsize=2.5, zorder=3)
                    uns = d[d["unstable"]]
                    ax.scatter(uns["sparsity"] * 100, uns["effective_gflops"], **UNSTABLE)
            ax.set_title(analysis.shape_label(shape, M, K, N))
            _sparsity_axis(ax, rows["sparsity"])
        for i, ax in enumerate(axes):
            _set_scale(ax, values)
            if i % ncols == 0:
                ax.set_ylabel("useful GFLOP/s")
            if i + ncols >= len(axes):
                ax.set_xlabel("sparsity (%)")
            if i % ncols == ncols - 1 or i == len(axes) - 1:
                sec = ax.secondary_yaxis("right", functions=(lambda v: v / peak * 100, lambda p: p * peak / 100))
                sec.set_ylabel("% of measured peak")
                sec.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                if ax.get_yscale() == "log":
                    sec.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
                    sec.yaxis.set_minor_formatter(ticker.NullFormatter())
        handles = _method_block_handles(methods, colors, blocks, markers) + [
            Line2D([], [], color="#e41a1c", label=f"measured peak {peak:.4g} GFLOP/s"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="#e41a1c",
                   markersize=9, label="unstable (spread ≥ 10%)")]
        _outside_legend(fig, handles)
        fig.suptitle(f"Useful GFLOP/s (2·nnz·N per second) vs the measured peak — {label}")
        caption = (f"Effective rate counting only the multiply-adds of stored nonzeros ({label}); dense counts "
                   f"the same useful work, so it falls with sparsity. Red line: {what}, {peak:.4g} GFLOP/s — "
                   "a measured peak, not a datasheet figure. Error bars from the p20–p80 times.")
        out.append((f"gflops{suffix}", f"Effective GFLOP/s vs measured peak ({label})", caption, fig))
    if not out:
        raise Skip("no machine peak and no dense measurement in the compare results, so there is no peak "
                   "to compare with")
    return out


# -- tuned parameters and tuned vs default -----------------------------------------------------

PARAMS = ("n_tile", "k_slice", "prefetch", "m_tile", "n_panel", "isa")


def _heat_grid(choices):
    """Row labels (task without sparsity), column sparsities, and (row, col) -> choice row."""
    threads = choices["threads"].nunique() > 1

    def label(r):
        return (f"{analysis.shape_label(r.name, r.M, r.K, r.N)}  {r.block}" + (f"  t{r.threads}" if threads else "")
                + ("" if r.layout == "features" else f"  {r.layout}"))
    rows = list(dict.fromkeys(label(r) for r in choices.itertuples()))
    cols = sorted(set(choices["sparsity"]))
    cells = {(rows.index(label(r)), cols.index(r.sparsity)): r for r in choices.itertuples()}
    return rows, cols, cells


def _heat_size(rows, cols, panels, colorbar=False):
    """Figure size for `panels` heatmaps of rows x cols with the row labels on the left."""
    label = 0.062 * max(len(r) for r in rows)
    panel = max(1.7, 0.75 * len(cols) + 0.3) + (0.9 if colorbar else 0)
    return max(5.5, label + panels * panel + 0.4), 1.5 + 0.34 * len(rows)


def _heat_axes(ax, rows, cols, cells, xlabel=True):
    ax.set_xticks(range(len(cols)), [f"{c * 100:g}%" for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(False)
    ax.tick_params(length=0)
    if xlabel:
        ax.set_xlabel("sparsity")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if (i, j) not in cells:
                ax.text(j, i, "not tuned", ha="center", va="center", fontsize=7.5, color="0.55")
    for s in ax.spines.values():
        s.set_visible(False)


def _text_color(rgba):
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _need_choices(inputs):
    choices, source = analysis.tuned_choices(inputs)
    if not len(choices):
        raise Skip("no tuning results (tuning.jsonl from `sparsebench autotune` or tuned.json from "
                   "`sparsebench export`) in the folder" + _unread(inputs, "tuning", "tuned"))
    return choices, source


def tuned_param_figure(inputs):
    """Heatmaps of the winning value of each tuned parameter over task x sparsity."""
    choices, source = _need_choices(inputs)
    sparse = choices[choices["method"] == "sparse"]
    if not len(sparse):
        raise Skip("dense won every tuned task, so there are no kernel parameters to show")
    values = {p: sorted({c[p] for c in sparse["config"]}, key=lambda v: (isinstance(v, str), v)) for p in PARAMS}
    shown = [p for p in PARAMS if p == "n_tile" or len(values[p]) > 1]
    constant = [f"{p} = {values[p][0]}" for p in PARAMS if p not in shown]
    rows, cols, cells = _heat_grid(choices)
    ncols = len(shown) if len(shown) <= 3 else math.ceil(len(shown) / 2)
    nrows = math.ceil(len(shown) / ncols)
    width, height = _heat_size(rows, cols, ncols)
    fig = _figure(width, height * nrows)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    cmap = matplotlib.colormaps["viridis"]
    marked = False
    for ax, p in zip(axes, shown):
        vals = values[p]
        colors = [cmap(0.15 + 0.75 * i / max(1, len(vals) - 1)) for i in range(len(vals))]
        img = np.full((len(rows), len(cols)), np.nan)
        for (i, j), r in cells.items():
            if r.method == "sparse":
                img[i, j] = vals.index(r.config[p])
        ax.imshow(img, cmap=ListedColormap(colors), norm=BoundaryNorm(np.arange(len(vals) + 1) - 0.5, len(vals)),
                  aspect="auto", interpolation="nearest")
        for (i, j), r in cells.items():
            if r.method == "dense":
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
                ax.text(j, i, "dense", ha="center", va="center", fontsize=8)
                continue
            v = r.config[p]
            default = r.default_config[p] if isinstance(r.default_config, dict) else None
            star = "*" if default is not None and default != v else ""
            marked |= bool(star)
            ax.text(j, i, f"{v}{star}", ha="center", va="center", fontsize=8.5,
                    color=_text_color(colors[vals.index(v)]))
        _heat_axes(ax, rows, cols, cells, xlabel=ax in axes[len(shown) - ncols:len(shown)])
        ax.set_title(f"best {p}")
    fig.suptitle("Tuned kernel parameters per task (winner of each tuning run)")
    notes = []
    if marked:
        notes.append("* = differs from the default heuristic's choice")
    if constant:
        notes.append("same for every task: " + ", ".join(constant))
    if notes:
        fig.supxlabel("; ".join(notes), fontsize=8.5)
    caption = (f"Winning kernel configuration per task (source: {source}); 'dense' where dense won. "
               "n_tile is the register tile width in columns of X, k_slice the rows of X per K slice "
               "(0 = all of K), prefetch the software prefetch distance in blocks (0 = off), m_tile the "
               "block rows per scheduled task (0 = static nnz-balanced), n_panel the columns per cache "
               "panel (0 = all of N; token-major, the tokens of each panel task, 0 = X transposed whole "
               "first).")
    return [("tuned_parameters", "Tuned kernel parameters", caption, fig)]


def tuned_vs_default_figure(inputs):
    """Heatmaps of tuned-vs-default-heuristic and tuned-vs-dense speedups."""
    choices, source = _need_choices(inputs)
    choices = choices[choices["default_s"].notna() & choices["time_s"].notna()]
    if not len(choices):
        raise Skip("the tuning results hold no default-heuristic times")
    rows, cols, cells = _heat_grid(choices)
    fig = _figure(*_heat_size(rows, cols, 2, colorbar=True))
    axes = fig.subplots(1, 2, sharey=True).ravel()
    panels = (("default_s", "tuned vs default heuristic", "Greens"), ("dense_s", "tuned vs dense", "Blues"))
    unstable_any = False
    for ax, (col, title, cmap_name) in zip(axes, panels):
        img = np.full((len(rows), len(cols)), np.nan)
        for (i, j), r in cells.items():
            img[i, j] = getattr(r, col) / r.time_s
        finite = img[np.isfinite(img)]
        vmin = min(1.0, finite.min()) if len(finite) else 1.0
        vmax = max(vmin * 1.05, finite.max()) if len(finite) else 2.0
        im = ax.imshow(img, cmap=cmap_name, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        for (i, j), r in cells.items():
            if not np.isfinite(img[i, j]):
                continue
            unstable = analysis.is_true(r.unstable)
            unstable_any |= unstable
            ax.text(j, i, f"{img[i, j]:.2f}×" + ("?" if unstable else ""), ha="center", va="center",
                    fontsize=8.5, color=_text_color(im.cmap(im.norm(img[i, j]))))
        _heat_axes(ax, rows, cols, cells)
        ax.set_title(title)
        cb = fig.colorbar(im, ax=ax, shrink=0.9, format=_times_formatter("×"))
        cb.set_label("speedup (×)")
    fig.suptitle("Speedup of the tuned config (time ratio, > 1 = tuned is faster)")
    caption = (f"Left: default-heuristic time / tuned time; right: dense time / tuned time (source: {source}; "
               "times re-measured side by side at the end of each tuning run)."
               + (" ? = the tuned time was unstable (p20–p80 spread ≥ 10%)." if unstable_any else ""))
    return [("tuned_vs_default", "Tuned vs default heuristic", caption, fig)]


# -- convergence -------------------------------------------------------------------------------

def convergence_figure(inputs):
    """Best-so-far time relative to the task's best vs evaluations, median and p20-p80 per strategy."""
    if not len(inputs.tuning_results):
        raise Skip("no tuning database (tuning.jsonl from `sparsebench autotune`) with finished runs in the "
                   "folder" + _unread(inputs, "tuning"))
    conv = analysis.convergence(inputs)
    if not len(conv):
        raise Skip("the tuning runs recorded no successful evaluation (empty trajectories)")
    strategies = sorted(set(conv["strategy"]))
    colors = _colors(strategies)
    fig = _figure(7.0, 4.4)
    ax = fig.subplots()
    top = 1.0
    for s in strategies:
        curves = list(conv[conv["strategy"] == s]["curve"])
        med, lo, hi = (np.where(np.isfinite(a), a, np.nan) for a in analysis.curve_band(curves))
        x = np.arange(1, len(med) + 1)
        ax.fill_between(x, lo, hi, color=colors[s], alpha=0.18, linewidth=0, step="post")
        ax.plot(x, med, drawstyle="steps-post", color=colors[s], linewidth=1.8,
                marker="o" if len(x) <= 40 else None, markersize=3.5,
                linestyle=LINESTYLES[strategies.index(s) % len(LINESTYLES)],
                label=f"{s} ({len(curves)} run{'s' if len(curves) > 1 else ''})")
        top = max(top, np.nanmax(hi))
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.9)
    n = int(conv["evals"].max())
    if n > 30:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlim(*((0.9, n * 1.1) if n > 30 else (0.8, max(n, 2) + 0.2)))
    if top > LOG_SPAN:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0.98, top * 1.03)
    ax.yaxis.set_major_formatter(_times_formatter("×"))
    ax.set_xlabel("evaluations (sparse configs measured, in order)")
    ax.set_ylabel("best-so-far time / best time found (×)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="strategy: median over runs, band p20–p80",
               loc="outside lower center", ncol=min(3, len(labels)), frameon=False)
    fig.suptitle("Autotuning convergence: best time found so far vs evaluations")
    caption = ("Per tuning run, the fastest time found after each evaluation divided by the fastest time any "
               "strategy measured for that task; line = median over runs, band = p20–p80 over runs (a run "
               "that stopped keeps its final value). Smart and random start with the default heuristic; "
               "exhaustive walks the grid in order. Search-phase times (few samples), not the re-measured finals.")
    return [("convergence", "Autotuning convergence", caption, fig)]


# -- BERT --------------------------------------------------------------------------------------

def bert_labels(df):
    """(bar label per row, group label per row): runner, and model over batch, seq and threads.

    The sparsity and block go into the group label when the data has one pruning setting,
    into the runner label when it has several."""
    settings = {(s, b) for s, b in zip(df["sparsity"], df["block"]) if analysis.finite(s)}
    per_runner = len(settings) > 1
    bars, groups = [], []
    for r in df.itertuples():
        prune = analysis.pruning(r.sparsity, r.block) if analysis.finite(r.sparsity) else ""
        bars.append(f"{r.runner} {prune}" if per_runner and prune else str(r.runner))
        model = [str(r.model)] + ([analysis.pruning(*next(iter(settings)))]
                                  if settings and not per_runner else [])
        run = []
        if analysis.finite(r.batch) and analysis.finite(r.seq):
            run.append(f"batch {r.batch:.0f} × seq {r.seq:.0f}")
        if analysis.finite(r.threads):
            run.append(f"{r.threads:.0f} threads")
        groups.append(", ".join(model) + ("\n" + ", ".join(run) if run else ""))
    return bars, groups


def _short(v):
    """3 significant digits without exponent notation: 0.96, 17.6, 1040."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def bert_figure(inputs):
    """Per model configuration, latency bars (p50, whisker to p90) over throughput bars, per runner."""
    df = inputs.bert
    if not len(df):
        raise Skip("no BERT latencies (*-latency.csv from `sparsebench bert`, or bert*.csv) in the folder"
                   + _unread(inputs, "bert"))
    bars, groups = bert_labels(df)
    df = df.assign(runner_label=bars, group=groups)
    repeated = len(df) - len(df.drop_duplicates(["group", "runner_label"], keep="last"))
    df = df.drop_duplicates(["group", "runner_label"], keep="last")
    groups = list(dict.fromkeys(df["group"]))
    runners = list(dict.fromkeys(df["runner_label"]))
    colors = _colors(runners)
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = _figure(max(6.0, 0.4 + ncols * max(2.4, 0.55 * len(runners) + 0.8)), 0.9 + 4.6 * nrows)
    axes = fig.subplots(2 * nrows, ncols, squeeze=False)
    for g in range(len(groups), nrows * ncols):
        axes[2 * (g // ncols), g % ncols].set_visible(False)
        axes[2 * (g // ncols) + 1, g % ncols].set_visible(False)
    for g, group in enumerate(groups):
        lat, thr = axes[2 * (g // ncols), g % ncols], axes[2 * (g // ncols) + 1, g % ncols]
        d = df[df["group"] == group].reset_index(drop=True)
        x = np.array([runners.index(r) for r in d["runner_label"]], dtype=float)
        bar_colors = [colors[r] for r in d["runner_label"]]
        p50, p90 = d["p50_ms"].to_numpy(), d["p90_ms"].to_numpy()
        lat.bar(x, p50, 0.75, color=bar_colors, zorder=3)
        up = np.clip(np.nan_to_num(p90 - p50), 0, None)
        lat.errorbar(x, p50, yerr=[np.zeros_like(p50), up], fmt="none", ecolor="black", capsize=3,
                     linewidth=1, zorder=4)
        uns = d["unstable"].to_numpy()
        lat.scatter(x[uns], p50[uns], **{**UNSTABLE, "s": 70})
        for xi, y, top in zip(x, p50, p50 + up):
            lat.annotate(_short(y), (xi, top), xytext=(0, 2), textcoords="offset points", ha="center",
                         va="bottom", fontsize=7.5)
        thr.bar(x, d["throughput"], 0.75, color=bar_colors, zorder=3)
        for xi, y in zip(x, d["throughput"]):
            if np.isfinite(y):
                thr.annotate(_short(y), (xi, y), xytext=(0, 2), textcoords="offset points", ha="center",
                             va="bottom", fontsize=7.5)
        lat.set_title(group, fontsize=8.5)
        for ax in (lat, thr):
            ax.set_xticks([])
            ax.set_xlim(-0.6, len(runners) - 0.4)
            ax.grid(axis="x", visible=False)
            ax.margins(y=0.12)
            ax.set_ylim(bottom=0)
        if g % ncols == 0:
            lat.set_ylabel("latency (ms)\np50, whisker to p90")
            thr.set_ylabel("throughput (sequences/s)")
    handles = [Patch(color=colors[r], label=r) for r in runners]
    if df["unstable"].any():
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="#e41a1c", markersize=8, label="unstable"))
    _outside_legend(fig, handles)
    fig.suptitle("End-to-end BERT encoder: latency (top) and throughput (bottom) per runner")
    caption = ("Per model configuration: median (p50) latency of a forward pass with a whisker up to p90, "
               "and throughput in sequences per second, per runner. Each configuration has its own linear "
               "scale." + (f" {repeated} configurations were measured more than once (several files); the "
                           "figure shows the last file read, the table all of them." if repeated else ""))
    return [("bert", "BERT end-to-end latency and throughput", caption, fig)]


def breakdown_figure(inputs):
    """Horizontal stacked bars: where a forward pass of our encoder spends its time, per category."""
    df = inputs.breakdown
    if not len(df):
        raise Skip("no BERT per-op breakdown (*-breakdown.csv from `sparsebench bert`) in the folder"
                   + _unread(inputs, "breakdown"))
    df = analysis.breakdown(df)
    configs = list(dict.fromkeys(df["config"]))
    totals = df.groupby("category", sort=False)["ms"].sum()
    categories = [c for c in totals.index if totals[c] > 0]
    colors = {c: matplotlib.colormaps["tab10"](i % 10) for i, c in enumerate(categories)}
    fig = _figure(9.0, 1.6 + 0.45 * len(configs))
    ax = fig.subplots()
    left = np.zeros(len(configs))
    total = np.array([df[df["config"] == k]["ms"].sum() for k in configs])
    for c in categories:
        ms = np.array([df[(df["config"] == k) & (df["category"] == c)]["ms"].sum() for k in configs])
        ax.barh(range(len(configs)), ms, left=left, color=colors[c], label=c, height=0.6, zorder=3)
        for i, (x0, w) in enumerate(zip(left, ms)):
            if total[i] and w / total[i] >= 0.07:
                ax.text(x0 + w / 2, i, f"{w / total[i]:.0%}", ha="center", va="center", fontsize=7.5,
                        color=_text_color(colors[c]), zorder=4)
        left += ms
    ax.set_yticks(range(len(configs)), configs)
    ax.set_ylim(len(configs) - 0.5, -0.5)
    ax.set_xlabel("time per forward pass (ms)")
    ax.grid(axis="y", visible=False)
    _outside_legend(fig, [Patch(color=colors[c], label=c) for c in categories], max_cols=5, col_width=1.8)
    fig.suptitle("Where a forward pass of the sparsebench encoder spends its time")
    caption = ("Mean time per forward pass in each op category (the encoder's profiling mode), stacked; "
               "labels give the share of the pass. Categories that took no time are left out.")
    return [("bert_breakdown", "BERT per-op breakdown", caption, fig)]


#: (title, builder) in report order
BUILDERS = (("Speedup over dense vs sparsity", speedup_figures),
            ("Effective GFLOP/s vs measured peak", gflops_figures),
            ("Tuned kernel parameters", tuned_param_figure),
            ("Tuned vs default heuristic", tuned_vs_default_figure),
            ("Autotuning convergence", convergence_figure),
            ("BERT end-to-end latency and throughput", bert_figure),
            ("BERT per-op breakdown", breakdown_figure))
#: file-name stems this module writes (stale ones are removed before a build)
STEMS = ("speedup", "gflops", "tuned_parameters", "tuned_vs_default", "convergence", "bert", "bert_breakdown")


def make_figures(inputs, fig_dir, log=print, machine=None):
    """Draw and save every figure the inputs allow; `machine` (a label) goes under each title.

    Returns ({title: [FigureFile]}, {title: reason skipped}) in report order."""
    os.makedirs(fig_dir, exist_ok=True)
    for name in os.listdir(fig_dir):
        stem, ext = os.path.splitext(name)
        if ext in (".png", ".svg") and any(stem == s or stem.startswith(s + "-") for s in STEMS):
            os.remove(os.path.join(fig_dir, name))
    made, skipped = {}, {}
    for title, builder in BUILDERS:
        with matplotlib.rc_context(STYLE):
            try:
                figures = builder(inputs)
            except Skip as e:
                skipped[title] = str(e)
                log(f"skipped figure '{title}': {e}")
                continue
            made[title] = []
            for name, fig_title, caption, fig in figures:
                if machine:
                    fig.suptitle(f"{fig.get_suptitle()}\n{machine}")
                    fig_title = f"{fig_title} — {machine}"
                png = os.path.join(fig_dir, name + ".png")
                svg = os.path.join(fig_dir, name + ".svg")
                fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
                fig.savefig(svg, metadata={"Date": None})
                made[title].append(FigureFile(name, fig_title, caption, png, svg))
                log(f"figure {png} (+ .svg)")
    return made, skipped
