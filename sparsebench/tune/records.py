"""The tuning database: append-only JSON lines, one record per measured config.

Every record carries the hardware and build fingerprints, a short label of the CPU kind
("cpu", e.g. "AMD EPYC Zen 4 (family 25 model 17)") and the task key (shape, sparsity,
block, dtype, threads; the layout of X when token-major). Records of other machines or builds, and records without "cpu"
(written before sparsebench told CPU kinds apart), are set aside with a message saying
whose they are, never silently reused; `foreign=True` (the CLI's --use-foreign) takes
them anyway. Appends go through sparsebench.store (whole lines, flock, fsync), so a
crash or a concurrent run loses at most the measurement in flight.

A fleet run (sparsebench.tune.ray_runner) gathers the records of several CPU kinds in one
database: `hardware_ids` names the other machines (and their builds) whose records are kept.
"""
import collections
import dataclasses
import datetime
import json
import math
import os
import warnings

from .. import fingerprint, store
from ..config import KernelConfig
from ..dtypes import DTYPES
from ..errors import ConfigError
from ..machine import cpu_label
from ..spmm import LAYOUTS_OF_X

FORMAT = 1


@dataclasses.dataclass(frozen=True, order=True)
class Task:
    """What one tuning run optimises: Y (M x N) = W (M x K, sparsity, block) @ X."""

    M: int
    K: int
    N: int
    sparsity: float
    block: tuple
    dtype: str = "float32"
    threads: int = 1
    layout: str = "features"    # of X and Y: "features" (K x N, M x N) or "tokens" (N x K, N x M)

    def key(self):
        """The record key; layout only when token-major (feature-major keys are as they were)."""
        key = {"M": self.M, "K": self.K, "N": self.N, "sparsity": round(self.sparsity, 6),
               "block": "%dx%d" % self.block, "dtype": self.dtype, "threads": self.threads}
        if self.layout != "features":
            key["layout"] = self.layout
        return key

    def __str__(self):
        return (f"{self.M}x{self.K}x{self.N} s={self.sparsity:g} {self.block[0]}x{self.block[1]} "
                f"{self.dtype} t{self.threads}" + ("" if self.layout == "features" else f" {self.layout}"))


def task_of(rec):
    k = rec["task"]
    br, bc = (int(x) for x in k["block"].split("x"))
    layout = k.get("layout", "features")
    if layout not in LAYOUTS_OF_X:
        raise ValueError(f"unknown layout {layout!r}")
    return Task(int(k["M"]), int(k["K"]), int(k["N"]), float(k["sparsity"]), (br, bc), k["dtype"],
                int(k["threads"]), layout)


def candidate_of(rec):
    """'dense' or the KernelConfig a record measured."""
    return "dense" if rec["method"] == "dense" else KernelConfig.from_dict(rec["config"])


class TuningDB:
    """Records of this machine and build, read from `path`; new records are appended.

    `hardware_ids`: {hardware_id: {dtype: build_id}} of other machines whose records (of those
    builds) are kept too, e.g. the CPU kinds of a Ray fleet, or `newest_builds(path)`."""

    def __init__(self, path, foreign=False, log=print, writable=True, hardware_ids=None):
        self.path = path
        self.foreign = foreign
        self.hardware_id = fingerprint.hardware_id()
        self.cpu = cpu_label()
        # each dtype's kernels have their own build: changing one orphans only its records
        self.build_ids = {dtype: fingerprint.build_id(dtype) for dtype in DTYPES}
        self.other_builds = {hid: dict(builds) for hid, builds in (hardware_ids or {}).items()
                             if hid != self.hardware_id}
        self.records = []
        #: {why: count} of the records set aside as another machine's or build's
        self.ignored_reasons = collections.Counter()
        if writable:
            store.check_writable(path)
        for lineno, rec in enumerate(store.read_json(path), 1):
            try:
                task_of(rec)
                if rec["kind"] == "measurement":
                    candidate_of(rec)
            except (KeyError, TypeError, ValueError, ConfigError):
                warnings.warn(f"{path}: record {lineno} is not a sparsebench tuning record, skipped",
                              stacklevel=2)
                continue
            why = None if foreign else self._foreign_reason(rec)
            if why:
                self.ignored_reasons[why] += 1
                continue
            self.records.append(rec)
        if self.ignored:
            log(f"{path}: {self.ignored} records from another machine or build ignored: "
                + ", ".join(f"{n} {why}" for why, n in self.ignored_reasons.most_common())
                + f" (this one: hardware {self.hardware_id} ({self.cpu}), builds "
                + ", ".join(f"{d} {b}" for d, b in self.build_ids.items()) + "); "
                "pass --use-foreign to use them anyway (`sparsebench archive` moves older builds' aside)")

    @property
    def ignored(self):
        """How many records were set aside as another machine's or build's."""
        return sum(self.ignored_reasons.values())

    def _foreign_reason(self, rec):
        """Why `rec` is not this machine's and build's ("from ..."), or None if it is."""
        if not rec.get("cpu"):
            return "from an older sparsebench without CPU identity"
        hid = rec.get("hardware_id")
        builds = self.build_ids if hid == self.hardware_id else self.other_builds.get(hid)
        if builds is None:
            return f"from hardware {hid} ({rec['cpu']})"
        if rec.get("build_id") != builds.get(rec["task"]["dtype"]):
            return f"from build {rec.get('build_id')}"
        return None

    def _stamp(self, rec):
        rec.update(format=FORMAT, hardware_id=self.hardware_id, cpu=self.cpu,
                   build_id=self.build_ids[rec["task"]["dtype"]],
                   timestamp=datetime.datetime.now().isoformat(timespec="seconds"))
        return rec

    def add(self, rec):
        store.append_json(self.path, [self._stamp(rec)])
        self.records.append(rec)

    def add_stamped(self, records):
        """Append records another machine's TuningDB stamped (a fleet node's), as they are, in one
        write: a crash keeps all of them or none. Those of kept machines and builds are held."""
        store.append_json(self.path, records)
        self.records.extend(r for r in records if self.foreign or not self._foreign_reason(r))

    def measurements(self, task, hardware_id=None):
        """{candidate: record} of the task's completed measurements (the latest wins);
        `hardware_id`: only that machine's."""
        key = task.key()
        out = {}
        for rec in self.records:
            if (rec["kind"] == "measurement" and rec["task"] == key
                    and hardware_id in (None, rec.get("hardware_id"))):
                out[candidate_of(rec)] = rec
        return out

    def results(self, task=None, hardware_id=None):
        """'result' records (one per finished tuning run), optionally of one task and of one
        machine (`hardware_id`)."""
        key = task.key() if task else None
        return [r for r in self.records if r["kind"] == "result" and (key is None or r["task"] == key)
                and hardware_id in (None, r.get("hardware_id"))]

    def header(self):
        """Hardware and build descriptions for exported files."""
        return {"hardware": fingerprint.hardware(), "hardware_id": self.hardware_id, "cpu": self.cpu,
                "build": fingerprint.build(), "build_id": fingerprint.build_id()}


def newest_builds(path):
    """{hardware_id: {dtype: build_id}}: the build each machine in the database at `path` last
    recorded per dtype (what `export` keeps of machines whose current build is unknown here)."""
    builds = {}
    for rec in store.read_json(path):
        try:
            builds.setdefault(rec["hardware_id"], {})[rec["task"]["dtype"]] = rec["build_id"]
        except (KeyError, TypeError):
            continue
    return builds


def archive_path(path):
    """Where `archive` moves the old records of the database at `path`: tuning.jsonl ->
    tuning-archive.jsonl.gz beside it."""
    stem, ext = os.path.splitext(path)
    return f"{stem}-archive{ext or '.jsonl'}.gz"


def archive(path):
    """Move the records no tuner reads any more from the database at `path` to
    archive_path(path), gzipped: those written before records carried the CPU identity, and
    those of a build that is neither this process's nor the one each machine last wrote to
    (by timestamp) for that dtype. Returns (moved, kept) line counts. Nothing is lost: `zcat`
    the archive back onto the database to have them all again."""
    here = fingerprint.hardware_id()
    keep = {(here, dtype, fingerprint.build_id(dtype)) for dtype in DTYPES}

    def old(lines):
        records = []
        for line in lines:
            try:
                rec = json.loads(line)
                key = (str(rec.get("hardware_id")), str(rec["task"]["dtype"]), str(rec.get("build_id")))
                records.append((bool(rec.get("cpu")), key, str(rec.get("timestamp", ""))))
            except (ValueError, KeyError, TypeError, AttributeError):
                records.append(None)      # not a record of ours: left where it is
        newest = {}                       # (hardware, dtype): (timestamp, build) last written
        for r in records:
            if r and r[0]:
                kind = r[1][:2]
                newest[kind] = max(newest.get(kind, ("", "")), (r[2], r[1][2]))
        keep.update(kind + (build,) for kind, (_, build) in newest.items())
        return [bool(r) and (not r[0] or r[1] not in keep) for r in records]
    return store.move_lines(path, old, archive_path(path))


def nearby_winners(db, task, count=2, strategy=None):
    """Sparse winners of other tuned tasks with the same block, dtype and threads, nearest first
    (the same task in the other layout first of all): the smart strategy's seeds besides the
    default heuristic. `strategy`: only its winners."""
    def distance(t):
        return (sum(abs(math.log(a / b)) for a, b in ((t.M, task.M), (t.K, task.K), (t.N, task.N)))
                + abs(t.sparsity - task.sparsity) + (t.layout != task.layout) * 1e-3)
    found = {}
    for rec in db.results():
        t = task_of(rec)
        if (t != task and rec["method"] == "sparse" and t.block == task.block and t.dtype == task.dtype
                and t.threads == task.threads and strategy in (None, rec["strategy"])):
            found[candidate_of(rec)] = min(distance(t), found.get(candidate_of(rec), math.inf))
    return sorted(found, key=found.get)[:count]
