"""Tuned-config files: what `sparsebench export` writes and models import.

A small versioned JSON file holds, per tuned task (M, K, N, sparsity, block, dtype,
threads, layout), the winning choice ("sparse" with its KernelConfig, or "dense") and its times.
`load_tuned(path).lookup(...)` answers for any layer:

1. an exact task match (sparsity within 0.005; any thread count if threads is None,
   preferring this machine's default; the asked layout's entry, else the other layout's) -> that choice;
2. otherwise the nearest tuned task with the same block and dtype, if it is close
   (each of M, K, N within 2x, sparsity within 0.1) -> its choice, with a warning;
3. otherwise the default heuristic (sparse, config None), with a warning.

The file's header names the machine it was tuned on (hardware, hardware_id, cpu); loading
it on another machine warns (ForeignTunedWarning): its choices may not be the best here.
`machines` ({hardware_id: {"cpu", "entries"}}) holds the winners of every CPU kind in the
database (a Ray fleet's); `load_tuned` takes this machine's section, and warns in one line
when there is none. Files without `machines` (older exports) read as before.
"""
import dataclasses
import datetime
import json
import math
import operator
import os
import warnings

from .. import fingerprint, store
from ..config import KernelConfig
from ..errors import ConfigError
from ..machine import cpu_label
from ..spmm import LAYOUTS_OF_X

FORMAT = "sparsebench-tuned"
#: 2: entries carry the layout they were tuned in; version 1 files (all feature-major) still load.
#: 3: a token-major float32 config's n_panel picks its path (config.FLOAT32_CONFIG_RULES 2);
#: version 2 files load without their token-major float32 sparse entries, which may mean otherwise
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
SPARSITY_MATCH = 0.005


class TunedFallbackWarning(UserWarning):
    """A lookup for a task that was not tuned; the message says what is used instead."""


class ForeignTunedWarning(UserWarning):
    """A tuned-config file tuned on another machine (or before sparsebench told CPU kinds apart)."""


@dataclasses.dataclass(frozen=True)
class Choice:
    method: str                      # "sparse" or "dense"
    config: KernelConfig = None      # for "sparse"; None means the default heuristic
    exact: bool = True
    note: str = ""
    layout: str = "features"         # the layout of X the choice was tuned in


class TunedConfigs:
    """The entries of a tuned-config file (`entries`: one machine's section instead of the
    top-level entries)."""

    def __init__(self, data, path="<memory>", entries=None):
        self.path = path
        self.data = data
        self.entries = data["entries"] if entries is None else entries

    def lookup(self, M, K, N, sparsity, block, dtype="float32", threads=None, layout="features"):
        block = tuple(operator.index(b) for b in block)
        same = [e for e in self.entries if tuple(e["block"]) == block and e["dtype"] == dtype]
        exact = [e for e in same if (e["M"], e["K"], e["N"]) == (M, K, N)
                 and abs(e["sparsity"] - sparsity) <= SPARSITY_MATCH
                 and (threads is None or e["threads"] == threads)]
        if exact:
            from ..cpu import default_threads
            # this layout's entry first; the other layout's config runs here too (same kernels)
            exact.sort(key=lambda e: (_layout(e) != layout, e["threads"] != default_threads(), -e["threads"]))
            e = exact[0]
            note = "tuned" if _layout(e) == layout else f"tuned {_layout(e)}-major (no {layout}-major entry)"
            return self._choice(e, threads, True, note)
        what = f"{M}x{K}x{N} sparsity {sparsity:g} block {block[0]}x{block[1]} {dtype}"
        near = [e for e in same if max(_ratio(e["M"], M), _ratio(e["K"], K), _ratio(e["N"], N)) <= 2
                and abs(e["sparsity"] - sparsity) <= 0.1]
        if near:
            e = min(near, key=lambda e: _distance(e, M, K, N, sparsity) + (_layout(e) != layout) * 1e-3)
            note = (f"{what} was not tuned; using the choice tuned for {e['M']}x{e['K']}x{e['N']} "
                    f"sparsity {e['sparsity']:g}" + ("" if _layout(e) == layout else f" {_layout(e)}-major")
                    + f" ({self.path})")
            warnings.warn(note, TunedFallbackWarning, stacklevel=2)
            return self._choice(e, threads, False, note)
        note = f"{what} was not tuned and no tuned shape is close; using the default heuristic ({self.path})"
        warnings.warn(note, TunedFallbackWarning, stacklevel=2)
        return Choice("sparse", None, False, note)

    @staticmethod
    def _choice(entry, threads, exact, note):
        if entry["method"] == "dense":
            return Choice("dense", None, exact, note, _layout(entry))
        cfg = KernelConfig.from_dict(entry["config"])
        if threads is not None and cfg.threads != threads:
            cfg = dataclasses.replace(cfg, threads=threads)
        return Choice("sparse", cfg, exact, note, _layout(entry))


def _layout(entry):
    """The layout an entry was tuned in (entries before token-major tuning: "features")."""
    return entry.get("layout", "features")


def _ratio(a, b):
    return max(a, b) / max(min(a, b), 1)


def _distance(e, M, K, N, sparsity):
    return sum(abs(math.log(a / b)) for a, b in ((e["M"], M), (e["K"], K), (e["N"], N))) + abs(e["sparsity"] - sparsity)


def load_tuned(path):
    """Read a tuned-config file; a clear error if it is missing, corrupt or of another format."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"tuned-config file {path} not found; create it with "
                          "`sparsebench autotune ...` then `sparsebench export --out PATH`") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); re-export it with `sparsebench export`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a sparsebench tuned-config file (format {FORMAT!r} expected)")
    if data.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"{path} has tuned-config version {data.get('version')!r}; this sparsebench "
                          f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: re-export it with "
                          "`sparsebench export`")
    try:
        machines = data.get("machines", {})
        for e in data["entries"] + [e for section in machines.values() for e in section["entries"]]:
            if e["method"] == "sparse":
                KernelConfig.from_dict(e["config"])
            tuple(e["block"]), e["M"], e["K"], e["N"], e["sparsity"], e["dtype"], e["threads"]
            if _layout(e) not in LAYOUTS_OF_X:
                raise ConfigError(f"unknown layout {_layout(e)!r}")
    except (AttributeError, KeyError, TypeError, ConfigError) as e:
        raise ConfigError(f"{path}: malformed entry ({e}); re-export it with `sparsebench export`") from None
    if data["version"] < 3:
        _drop_old_token_major(data, path)
    here = machines.get(fingerprint.hardware_id())
    if here is not None:
        return TunedConfigs(data, path, here["entries"])
    _warn_if_foreign(data, path)
    return TunedConfigs(data, path)


def _drop_old_token_major(data, path):
    """Remove the token-major float32 sparse entries of a version 2 file (in place), with a
    warning: files of that version could have been exported when such a config without an
    n_panel ran panel tasks; it now transposes X whole first."""
    dropped = 0
    for holder in [data] + list(data.get("machines", {}).values()):
        old = holder["entries"]
        holder["entries"] = [e for e in old if not (_layout(e) == "tokens" and e["dtype"] == "float32"
                                                    and e["method"] == "sparse")]
        dropped += len(old) - len(holder["entries"])
    if dropped:
        warnings.warn(f"{path}: {dropped} token-major float32 entries of tuned-config version 2 left out "
                      "(their configs meant another path then); re-tune them with `sparsebench autotune "
                      "--layout tokens` and export again", TunedFallbackWarning, stacklevel=3)


def _warn_if_foreign(data, path):
    """One line of ForeignTunedWarning unless `data` (a tuned-config file without a section for this
    machine) was tuned on this machine."""
    here = fingerprint.hardware_id()
    machines = data.get("machines") or {}
    kinds = ("; it holds tuned configs for " + ", ".join(f"{hid} ({m.get('cpu')})" for hid, m in machines.items())
             + " only") if machines else ""
    if data.get("cpu") and data.get("hardware_id") == here:
        if not machines:
            return
        what = f"has no tuned configs for this machine (hardware {here}, {cpu_label()})"
    else:
        tuned_on = (f"another machine (hardware {data.get('hardware_id')}, {data['cpu']})" if data.get("cpu")
                    else "a machine an older sparsebench could not tell apart (no CPU identity)")
        what = f"was tuned on {tuned_on}, not this one (hardware {here}, {cpu_label()})"
    warnings.warn(f"{path} {what}{kinds}; its choices may not be the fastest here: re-tune with "
                  "`sparsebench autotune` (`--ray` tunes every CPU kind of a Ray cluster) and "
                  "`sparsebench export`", ForeignTunedWarning, stacklevel=3)


def export(db, path):
    """Write the best result per task of `db` (a TuningDB) to `path` atomically; return the data.
    `entries`: this machine's (every record's with --use-foreign), as before; `machines`: each
    CPU kind's in `db`, keyed by hardware id."""
    results = db.results()
    machines = {}
    for rec in results:
        if rec.get("cpu") and rec.get("hardware_id"):
            machines.setdefault(rec["hardware_id"], {"cpu": rec["cpu"], "results": []})["results"].append(rec)
    here = [r for r in results if db.foreign or r.get("hardware_id") == db.hardware_id]
    data = {"format": FORMAT, "version": VERSION,
            "created": datetime.datetime.now().isoformat(timespec="seconds"), "database": os.path.abspath(db.path),
            **db.header(), "entries": _winners(here),
            "machines": {hid: {"cpu": m["cpu"], "entries": _winners(m["results"])} for hid, m in machines.items()}}
    with store.atomic_file(path) as f:
        json.dump(data, f, indent=1)
    return data


def _winners(results):
    """Tuned-config entries: the fastest of `results` (result records) per task."""
    best = {}
    for rec in results:
        key = json.dumps(rec["task"], sort_keys=True)
        if key not in best or rec["best_s"] < best[key]["best_s"]:
            best[key] = rec
    entries = []
    for rec in sorted(best.values(), key=lambda r: (r["task"]["block"], r["task"]["M"], r["task"]["K"],
                                                    r["task"]["N"], r["task"]["sparsity"],
                                                    r["task"].get("layout", "features"))):
        t = rec["task"]
        entries.append({"name": rec.get("name", ""), "M": t["M"], "K": t["K"], "N": t["N"],
                        "sparsity": t["sparsity"], "block": [int(x) for x in t["block"].split("x")],
                        "dtype": t["dtype"], "threads": t["threads"], "layout": t.get("layout", "features"),
                        "method": rec["method"],
                        "config": rec["config"], "time_s": rec["best_s"], "dense_s": rec["dense_s"],
                        "default_s": rec["default_s"], "speedup": rec["dense_s"] / rec["best_s"],
                        "strategy": rec["strategy"], "evals": rec["evals"]})
    return entries
