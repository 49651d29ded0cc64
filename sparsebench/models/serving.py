"""Throughput under a latency budget: several engines ("streams") serving requests at once.

A stream is a worker process with its own encoder on `threads // streams` threads, pinned to
its own cores where there are enough. All streams start together (a barrier), each runs
forward passes back to back (a closed loop: a request is a batch of sequences), and the
throughput is the sum over streams of sequences per second; the latency of a request is the
time of its forward pass. `latency_budget` searches the stream count and the batch size for
the most sequences per second whose p90 latency fits the budget, as DeepSparse's multi-stream
scheduler and the MLPerf server scenario report it.
"""
import dataclasses
import multiprocessing
import os
import threading
import time
import warnings

import numpy as np

#: a measurement lasts at least this long (by default), and at least MIN_REQUESTS requests per stream
WINDOW_S = 2.0
MIN_REQUESTS = 10
#: and never longer than this many windows
MAX_WINDOWS = 10
#: seconds a stream waits at the start barrier for the others (a stream that died breaks it)
BARRIER_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every stream builds the same encoder: BertEncoder.random(model, seed=...) or
    BertEncoder.from_pretrained(checkpoint), with `options` (sparsity, block, tuned, dtype,
    attention); the threads are the stream's."""

    model: str = "bert-base"
    checkpoint: str = None
    seed: int = 0
    options: tuple = ()          # sorted (name, value) pairs

    @classmethod
    def of(cls, model="bert-base", checkpoint=None, seed=0, **options):
        options.pop("threads", None)
        return cls(model, checkpoint, seed, tuple(sorted(options.items())))

    def build(self, threads):
        from .bert import BertEncoder
        if self.checkpoint:
            return BertEncoder.from_pretrained(self.checkpoint, threads=threads, **dict(self.options))
        return BertEncoder.random(self.model, seed=self.seed, threads=threads, **dict(self.options))


def check_stream_counts(streams, threads):
    """ValueError unless every stream count divides `threads`."""
    bad = [s for s in streams if not (isinstance(s, int) and 0 < s <= threads and threads % s == 0)]
    if bad:
        raise ValueError(f"a stream count must divide the {threads} threads, got {bad[0]!r}")


def stream_layouts(threads):
    """(streams, threads per stream) for every stream count that divides `threads`."""
    return [(s, threads // s) for s in range(1, threads + 1) if threads % s == 0]


def _serve(recipe, threads, cores, barrier, finished, conn):
    """A stream: build the encoder, then answer ("measure", batch, seq, window) with the
    latencies of the forward passes run from the barrier to the end of the window; ("stop",)
    ends it. A stream whose window has ended keeps serving, untimed, until every stream's has
    (`finished` counts them), so that no stream's last requests run on a quieter machine."""
    if cores:
        os.sched_setaffinity(0, cores)
    from ..tune.apply import TunedFallbackWarning
    from .runner import make_inputs
    # the parent has reported the kernels and their fallbacks; one report is enough
    warnings.simplefilter("ignore", TunedFallbackWarning)
    enc = recipe.build(threads)
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, batch, seq, window = msg
        ids, mask, types = make_inputs(enc.config, batch, seq)
        out = np.empty((batch, seq, enc.config.hidden), np.float32)
        for _ in range(2):
            enc(ids, mask, types, out=out)
        try:
            barrier.wait(BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            return                       # another stream died, or the parent gave up
        latencies = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            enc(ids, mask, types, out=out)
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            elapsed = t1 - start
            if (elapsed >= window and len(latencies) >= MIN_REQUESTS) or elapsed >= MAX_WINDOWS * window:
                break
        with finished.get_lock():
            finished.value += 1
        while finished.value < barrier.parties:
            enc(ids, mask, types, out=out)
        conn.send(("done", (latencies, elapsed)))


class Streams:
    """`streams` worker processes of `threads_per_stream` threads each, built from `recipe`;
    a context manager (the workers stop on exit)."""

    def __init__(self, recipe, streams, threads_per_stream):
        self.streams, self.threads = streams, threads_per_stream
        ctx = multiprocessing.get_context("spawn")
        self._barrier = ctx.Barrier(streams)
        self._finished = ctx.Value("i", 0)
        cpus = sorted(os.sched_getaffinity(0))
        pin = len(cpus) >= streams * threads_per_stream
        self._conns, self._procs = [], []
        env = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads_per_stream)   # inherited at spawn
        try:
            for i in range(streams):
                cores = set(cpus[i * threads_per_stream:(i + 1) * threads_per_stream]) if pin else None
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(recipe, threads_per_stream, cores, self._barrier,
                                                        self._finished, child),
                                   daemon=True, name=f"sparsebench-stream-{i}")
                proc.start()
                child.close()            # the worker's end: its death then reads as EOF here
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                self._receive(conn, "ready")
        except BaseException:
            self._stop()
            raise
        finally:
            if env is None:
                os.environ.pop("OPENBLAS_NUM_THREADS", None)
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = env

    def _receive(self, conn, kind):
        try:
            while not conn.poll(1.0):
                if not all(p.is_alive() for p in self._procs):
                    raise EOFError
            got, payload = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("a stream worker died (see its error above)") from None
        assert got == kind, (got, kind)
        return payload

    def measure(self, batch, seq, window=WINDOW_S):
        """A row: every stream serving batches of `batch` sequences at once for `window` seconds."""
        self._finished.value = 0
        for conn in self._conns:
            conn.send(("measure", batch, seq, window))
        results = [self._receive(conn, "done") for conn in self._conns]
        latencies = np.concatenate([np.asarray(lat) for lat, _ in results])
        throughput = sum(len(lat) * batch / elapsed for lat, elapsed in results)
        return {"streams": self.streams, "threads_per_stream": self.threads, "batch": batch, "seq": seq,
                "p50_ms": float(np.median(latencies)) * 1e3, "p90_ms": float(np.percentile(latencies, 90)) * 1e3,
                "throughput_seq_s": throughput, "requests": int(latencies.size)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stop()

    def _stop(self):
        """Stop every worker: a "stop" message, the barrier broken for any that wait at it, and
        after 5 s SIGTERM; every process reaped."""
        self._barrier.abort()
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def latency_budget(recipe, threads, seq, budget_s, streams=None, max_batch=64, window=WINDOW_S, log=print):
    """The most sequences per second whose p90 latency fits `budget_s`: (best row or None, all
    rows). For each stream count (default: every one that divides `threads`), doubles the batch
    from 1 until p90 exceeds the budget, then bisects between the last batch that fit and the
    first that did not (throughput grows with the batch while it fits)."""
    check_stream_counts(streams or (), threads)
    rows = []
    for n, per_stream in (stream_layouts(threads) if streams is None else
                          [(s, threads // s) for s in streams]):
        with Streams(recipe, n, per_stream) as pool:
            measured = {}

            def fits(batch, pool=pool, measured=measured):
                if batch not in measured:
                    row = pool.measure(batch, seq, window)
                    row["fits"] = row["p90_ms"] <= budget_s * 1e3
                    measured[batch] = row
                    log(f"  {n} stream(s) x {per_stream} thread(s), batch {batch:3d}: p90 {row['p90_ms']:8.2f} ms, "
                        f"{row['throughput_seq_s']:8.1f} seq/s{'' if row['fits'] else '  (over budget)'}")
                return measured[batch]["fits"]

            if fits(1):
                fit, miss = 1, None
                while miss is None and fit < max_batch:
                    nxt = min(2 * fit, max_batch)
                    fit, miss = (nxt, None) if fits(nxt) else (fit, nxt)
                while miss is not None and miss - fit > 1:
                    mid = (fit + miss) // 2
                    fit, miss = (mid, miss) if fits(mid) else (fit, mid)
            rows += sorted(measured.values(), key=lambda r: r["batch"])
    ok = [r for r in rows if r["fits"]]
    return (max(ok, key=lambda r: r["throughput_seq_s"]) if ok else None), rows

