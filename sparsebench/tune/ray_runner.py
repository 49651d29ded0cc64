"""Fleet tuning on Ray: every task on every distinct CPU kind of a cluster, in one database.

The caller connects to a Ray cluster (or starts a local one), runs a tiny probe pinned to each
alive node (NodeAffinitySchedulingStrategy) that reports the node's hardware id, CPU label and
build ids, and groups the nodes into CPU kinds (hardware id and build). Each node gets one
NodeTuner actor holding all of its CPUs, so two timings never share a machine; the actors of a
kind pull that kind's tasks from one queue. An actor tunes one task at a time with the usual
Autotuner against a temporary database on its node, seeded with the kind's records the task can
use (nearby winners, the task's earlier measurements), and returns the records it added. The
caller appends each task's records in one write as the task finishes (ray.wait), so an
interrupted caller loses only the tasks in flight, and a re-run skips tasks that already have a
result for that hardware, build and strategy. A task whose actor or node dies is queued again
for another actor of its kind (a new one on the same node if the node lives), up to
MAX_ATTEMPTS times; only tasks that returned are appended, so nothing is lost or duplicated.
"""
import collections
import dataclasses
import os
import re
import sys
import tempfile
import time

from .. import fingerprint, store
from ..dtypes import DTYPES
from ..errors import MethodUnavailable, SparsebenchError
from ..machine import cpu_label
from .records import TuningDB

INSTALL_HINT = 'fleet tuning needs Ray: pip install "sparsebench[ray]"'
#: --ray without an address: start a local cluster
LOCAL = "local"
#: "auto", LOCAL, or host:port / ray://host:port
ADDRESS_PATTERN = re.compile(r"auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+")
#: runs of one task before it is given up (its actor or node died each time)
MAX_ATTEMPTS = 3
#: seconds to wait for the node probes
PROBE_TIMEOUT = 120
#: seconds between checks for in-flight work on nodes that died
NODE_CHECK_INTERVAL = 5.0
#: object store of a local cluster: the records are small
LOCAL_OBJECT_STORE = 200 * 1024 ** 2


def import_ray():
    """The ray module, or MethodUnavailable with a one-line install hint."""
    try:
        import ray
    except ImportError:
        raise MethodUnavailable(INSTALL_HINT) from None
    return ray


def check_address(text):
    """A --ray ADDRESS: 'auto', 'local', host:port or ray://host:port; ValueError otherwise."""
    if not isinstance(text, str) or not ADDRESS_PATTERN.fullmatch(text.strip()):
        raise ValueError(f"--ray takes 'auto', an address such as 10.0.0.1:6379 or ray://10.0.0.1:10001, "
                         f"or nothing (a local cluster), not {text!r}")
    return text.strip()


@dataclasses.dataclass(eq=False)
class Node:
    """An alive Ray node and what its probe reported."""

    node_id: str
    address: str
    cpus: int
    hardware_id: str
    cpu: str
    build_ids: dict

    @property
    def name(self):
        return f"{self.address} ({self.node_id[:8]})"


@dataclasses.dataclass(eq=False)
class Kind:
    """The nodes of one CPU kind (hardware id and build), and the outcome of its tasks."""

    hardware_id: str
    cpu: str
    build_ids: dict
    nodes: list
    tasks: list = dataclasses.field(default_factory=list)       # (name, Task) to tune
    results: list = dataclasses.field(default_factory=list)     # result records tuned now
    skipped: list = dataclasses.field(default_factory=list)     # result records already in the database
    reruns: int = 0                                             # tasks run again after a worker died
    failed: list = dataclasses.field(default_factory=list)      # (task label, why)
    out_of_time: int = 0                                        # tasks left when the time limit came

    @property
    def threads(self):
        """Threads per task when --threads is not given: all CPUs of the kind's smallest node."""
        return min(node.cpus for node in self.nodes)

    @property
    def label(self):
        return f"{self.cpu} [{self.hardware_id}]"


def probe():
    """What a node reports about itself (run pinned to it)."""
    return {"hardware_id": fingerprint.hardware_id(), "cpu": cpu_label(),
            "build_ids": {dtype: fingerprint.build_id(dtype) for dtype in DTYPES}}


class NodeTuner:
    """The Ray actor of one node: tunes one task at a time against a temporary database."""

    def __init__(self, settings):
        self.settings = settings

    def tune(self, task, name, seeds, time_share=None):
        """Tune `task` with `seeds` (records of this kind) in the database; the records added."""
        from ..cpu import available_isas
        from .autotune import Autotuner

        s = self.settings
        isas = available_isas(task.dtype)
        with tempfile.TemporaryDirectory(prefix="sparsebench-ray-") as folder:
            path = os.path.join(folder, "tuning.jsonl")
            store.append_json(path, seeds)
            db = TuningDB(path, log=_quiet)
            tuner = Autotuner(db, s["strategy"], max_evals=s["max_evals"], retune=s["retune"],
                              samples=s["samples"], isas=isas if s["isa"] == "all" else isas[:1], log=_quiet)
            tuner.tune(task, name, time_share)
            return store.read_json(path)[len(seeds):]


def _quiet(*_):
    """A log that drops its lines (a node's tuner reports through its records)."""


class FleetTuner:
    """Tune tasks on every CPU kind of a Ray cluster into one database (see the module doc)."""

    def __init__(self, db_path, address=LOCAL, strategy="smart", max_evals=None, samples=7, isa="best",
                 retune=False, time_limit=None, foreign=False, log=print):
        self.ray = import_ray()
        self.db_path = db_path
        self.address = check_address(address)
        self.settings = {"strategy": strategy, "max_evals": max_evals, "samples": samples, "isa": isa,
                         "retune": retune}
        self.time_limit = time_limit
        self.foreign = foreign
        self.log = log
        self.started = False          # whether this tuner started (and so shuts down) Ray
        self.actors = {}              # node_id -> live actor handle
        self.generations = collections.Counter()    # node_id -> actors started there

    # -- cluster ----------------------------------------------------------------------------

    def connect(self):
        """Join the cluster at self.address, or start a local one (a connection this process
        already has is used as it is)."""
        ray = self.ray
        if ray.is_initialized():
            return
        try:
            if self.address == LOCAL:
                ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                         logging_level="error", log_to_driver=False)
            else:
                ray.init(address=self.address, logging_level="error", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SparsebenchError(f"cannot connect to Ray at {self.address}: {_one_line(e)}; start a "
                                   "cluster with `ray start --head` (or pass no address for a local one)") from None
        self.started = True

    def close(self):
        """Stop this run's actors; shut Ray down if this tuner started or joined it."""
        for actor in self.actors.values():
            self.ray.kill(actor)
        self.actors.clear()
        if self.started:
            self.ray.shutdown()
            self.started = False

    def alive_nodes(self):
        """{node_id: node info} of the cluster's alive nodes."""
        return {n["NodeID"]: n for n in self.ray.nodes() if n.get("Alive")}

    def _pinned(self, node_id):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        return NodeAffinitySchedulingStrategy(node_id, soft=False)

    def probe_nodes(self):
        """The alive nodes with CPUs that answered the probe (others are named and left out)."""
        ray = self.ray
        remote_probe = ray.remote(num_cpus=0, max_retries=0)(probe)
        pending = {}
        for node_id, info in self.alive_nodes().items():
            cpus = int(info.get("Resources", {}).get("CPU", 0))
            address = info.get("NodeManagerAddress", "?")
            if cpus < 1:
                self.log(f"node {address} ({node_id[:8]}) offers no CPUs to Ray: left out")
                continue
            ref = remote_probe.options(scheduling_strategy=self._pinned(node_id)).remote()
            pending[ref] = (node_id, address, cpus)
        ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_TIMEOUT)
        nodes = []
        for ref in ready:
            node_id, address, cpus = pending[ref]
            try:
                nodes.append(Node(node_id, address, cpus, **ray.get(ref)))
            except ray.exceptions.RayError as e:
                self.log(f"node {address} ({node_id[:8]}) cannot run sparsebench ({_one_line(e)}): left out")
        for ref in late:
            node_id, address, _ = pending[ref]
            ray.cancel(ref, force=True)
            self.log(f"node {address} ({node_id[:8]}) did not answer within {PROBE_TIMEOUT} s: left out")
        if not nodes:
            raise SparsebenchError(f"no node of the Ray cluster at {self.address} can tune (see above)")
        return nodes

    @staticmethod
    def group(nodes, dtype):
        """CPU kinds: the nodes grouped by hardware id and build of `dtype`'s kernels."""
        kinds = {}
        for node in sorted(nodes, key=lambda n: n.address):
            key = (node.hardware_id, node.build_ids[dtype])
            kinds.setdefault(key, Kind(node.hardware_id, node.cpu, node.build_ids, []))
            kinds[key].nodes.append(node)
        return list(kinds.values())

    def _start_actor(self, node):
        """A NodeTuner pinned to `node`, holding all its CPUs."""
        self.generations[node.node_id] += 1
        actor = self.ray.remote(NodeTuner).options(
            num_cpus=node.cpus, scheduling_strategy=self._pinned(node.node_id), max_restarts=0,
            name=actor_name(node.node_id, self.generations[node.node_id])).remote(self.settings)
        self.actors[node.node_id] = actor
        return actor

    # -- the run ----------------------------------------------------------------------------

    def run(self, kinds, progress):
        """Tune each kind's `tasks` on its nodes, filling in the kinds' outcomes; the TuningDB.
        `progress`: a FleetProgress."""
        try:
            return self._run(kinds, progress)
        finally:
            progress.close()

    def _run(self, kinds, progress):
        ray = self.ray
        db, queues = self._queues(kinds)
        progress.start(kinds)
        deadline = time.monotonic() + self.time_limit if self.time_limit else None
        idle = [(kind, node) for kind in kinds for node in kind.nodes]
        inflight = {}             # ref -> (kind, node, (name, task))
        attempts = collections.Counter()
        last_check = time.monotonic()
        while True:
            for kind, node in list(idle):
                if queues[kind] and not (deadline and time.monotonic() >= deadline):
                    ref, item = self._dispatch(db, kind, node, queues[kind], deadline)
                    inflight[ref] = (kind, node, item)
                    idle.remove((kind, node))
                    progress.started(kind, node, task_label(*item))
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if not ready:
                if time.monotonic() - last_check > NODE_CHECK_INTERVAL:
                    last_check = time.monotonic()
                    self._kill_actors_of_dead_nodes({node.node_id for _, node, _ in inflight.values()})
                continue
            kind, node, item = inflight.pop(ready[0])
            label = task_label(*item)
            try:
                records = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:       # the tuner raised: not a lost worker
                kind.failed.append((label, _one_line(e.cause or e)))
                progress.failed(kind, node, label, _one_line(e.cause or e))
            except ray.exceptions.RayError as e:           # the actor or its node died
                self.actors.pop(node.node_id, None)
                attempts[(kind, item)] += 1
                if attempts[(kind, item)] < MAX_ATTEMPTS:
                    kind.reruns += 1
                    queues[kind].appendleft(item)
                    progress.lost(kind, node, label, f"{_one_line(e)}; running it again")
                else:
                    kind.failed.append((label, f"its worker died {MAX_ATTEMPTS} times"))
                    progress.failed(kind, node, label, f"its worker died {MAX_ATTEMPTS} times")
                if node.node_id not in self.alive_nodes():
                    kind.nodes.remove(node)
                    progress.note(f"node {node.name} of {kind.label} is gone")
                    continue
            else:
                db.add_stamped(records)
                result = [r for r in records if r["kind"] == "result"]
                kind.results.extend(result)
                progress.finished(kind, node, label, result[-1] if result else None)
            idle.append((kind, node))
        for kind in kinds:
            if not kind.nodes:
                kind.failed.extend((task_label(*item), "no node of this kind left") for item in queues[kind])
            else:
                kind.out_of_time = len(queues[kind])
        return db

    def _queues(self, kinds):
        """The database (with the kinds' records) and {kind: deque of its (name, task) not tuned yet
        with this strategy}; the tuned ones go to kind.skipped."""
        by_hardware = {}
        for kind in kinds:
            by_hardware.setdefault(kind.hardware_id, {}).update(kind.build_ids)
        db = TuningDB(self.db_path, foreign=self.foreign, log=self.log, hardware_ids=by_hardware)
        queues = {}
        for kind in kinds:
            queues[kind] = collections.deque()
            for name, task in kind.tasks:
                done = [r for r in db.results(task, kind.hardware_id) if r["strategy"] == self.settings["strategy"]
                        and r.get("build_id") == kind.build_ids[task.dtype]]
                if done and not self.settings["retune"]:
                    kind.skipped.append(done[-1])
                else:
                    queues[kind].append((name, task))
        return db, queues

    def _dispatch(self, db, kind, node, queue, deadline):
        """Send the next task of `queue` to `node`'s actor (started if needed); (its ref, (name, task))."""
        name, task = queue.popleft()
        actor = self.actors.get(node.node_id) or self._start_actor(node)
        time_share = None
        if deadline:
            time_share = max(deadline - time.monotonic(), 0) * len(kind.nodes) / (len(queue) + 1)
        seeds = db.results(hardware_id=kind.hardware_id) + list(db.measurements(task, kind.hardware_id).values())
        return actor.tune.remote(task, name, seeds, time_share), (name, task)

    def _kill_actors_of_dead_nodes(self, node_ids):
        """Kill the actors of `node_ids` whose node died, so their tasks fail over now."""
        alive = self.alive_nodes()
        for node_id in node_ids:
            if node_id not in alive and node_id in self.actors:
                self.ray.kill(self.actors.pop(node_id))


def task_label(name, task):
    """How progress lines name a task: the Task, after its shape's name when it has one."""
    shape = f"{task.M}x{task.K}x{task.N}"
    return str(task) if name in ("", shape) else f"{name} {task}"


def actor_name(node_id, generation):
    """The Ray name of a node's NodeTuner actor (the n-th started on that node)."""
    return f"sparsebench-tuner-{node_id[:12]}-{generation}"


def _one_line(error):
    """The first line of an error's message."""
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


class FleetProgress:
    """Per node and task progress: a tqdm bar per CPU kind when tqdm is installed and stderr is a
    terminal, and always one line per finished, lost or failed task."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.bars = {}
        self.running = {}          # kind -> {node name: task name}
        try:
            import tqdm
            self.tqdm = tqdm.tqdm if sys.stderr.isatty() else None
        except ImportError:
            self.tqdm = None

    def start(self, kinds):
        for kind in kinds:
            self.running[kind] = {}
            self.note(f"{kind.label}: {len(kind.nodes)} node(s) ({', '.join(n.name for n in kind.nodes)}); "
                      f"{len(kind.tasks)} tasks, {len(kind.skipped)} already tuned")
            if self.tqdm:
                self.bars[kind] = self.tqdm(total=len(kind.tasks), initial=len(kind.skipped),
                                                desc=kind.cpu[:40], unit="task", leave=True)

    def note(self, line):
        if self.bars:
            self.tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _update(self, kind, advance=0):
        bar = self.bars.get(kind)
        if bar:
            bar.set_postfix_str("; ".join(f"{n}: {t}" for n, t in self.running[kind].items()))
            bar.update(advance)

    def started(self, kind, node, name):
        self.running[kind][node.name] = name
        if not self.bars:
            self.note(f"  {node.name} [{kind.cpu}]: tuning {name}")
        self._update(kind)

    def finished(self, kind, node, name, result):
        self.running[kind].pop(node.name, None)
        what = "no result"
        if result:
            what = (("dense" if result["method"] == "dense" else "sparse") + f" {result['best_s'] * 1e3:.3f} ms, "
                    f"{result['dense_s'] / result['best_s']:.2f}x dense")
        done = len(kind.results) + len(kind.skipped)
        self.note(f"  [{done}/{len(kind.tasks)}] {node.name} [{kind.cpu}]: {name} -> {what}")
        self._update(kind, 1)

    def lost(self, kind, node, name, why):
        self.running[kind].pop(node.name, None)
        self.note(f"  {node.name} [{kind.cpu}]: worker lost during {name} ({why})")
        self._update(kind)

    def failed(self, kind, node, name, why):
        self.running[kind].pop(node.name, None)
        self.note(f"  {node.name} [{kind.cpu}]: {name} FAILED: {why}")
        self._update(kind, 1)

    def close(self):
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
