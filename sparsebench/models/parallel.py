"""Two-core helpers for the numpy parts of the encoder: BLAS thread count and parallel lanes.

numpy's ufuncs run on one thread. Work that splits into independent parts (the rows of the
numpy GELU of dense layers) runs on `Lanes`: the calling thread and helper threads claim the
parts one at a time; numpy releases the GIL inside its loops, so the parts run at the same
time. A helper whose core is busy (another process, a kernel pool still spinning) starts late
and simply takes fewer parts, so nobody waits for it.
"""
import contextlib
import functools
import itertools
import threading

from threadpoolctl import ThreadpoolController


@functools.lru_cache(maxsize=None)
def _controller():
    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(n):
    """numpy's BLAS limited to `n` threads inside the block."""
    with _controller().limit(limits=n, user_api="blas"):
        yield


class _Job:
    """fn(part, lane) for parts 0..parts-1, claimed one at a time by whichever lane is free."""

    def __init__(self, fn, parts):
        self._fn = fn
        self._parts = parts
        self._claim = itertools.count().__next__      # atomic under the GIL
        self._lock = threading.Lock()
        self._finished = 0
        self._done = threading.Event()
        self._error = None
        if parts <= 0:
            self._done.set()

    def work(self, lane):
        while True:
            part = self._claim()
            if part >= self._parts:
                return
            try:
                self._fn(part, lane)
            except BaseException as e:            # handed to the caller of Lanes.run
                self._error = self._error or e
            with self._lock:
                self._finished += 1
                if self._finished == self._parts:
                    self._done.set()

    def wait(self):
        self._done.wait()
        if self._error is not None:
            raise self._error


class _Helper:
    """A thread that runs the latest job it is given."""

    def __init__(self, lane):
        self._lane = lane
        self._go = threading.Event()
        self._job = None
        threading.Thread(target=self._loop, name=f"sparsebench-lane-{lane}", daemon=True).start()

    def submit(self, job):
        self._job = job
        self._go.set()

    def _loop(self):
        while True:
            self._go.wait()
            self._go.clear()
            self._job.work(self._lane)


class Lanes:
    """Run fn(part, lane) for every part on up to n threads; the caller is lane 0."""

    def __init__(self, n):
        self.n = max(1, int(n))
        self._helpers = [_Helper(lane) for lane in range(1, self.n)]
        self._lock = threading.Lock()

    def run(self, fn, parts):
        """Returns when every part is done; re-raises the first exception of any part."""
        with self._lock:
            job = _Job(fn, parts)
            for helper in self._helpers:
                helper.submit(job)
            job.work(0)
            job.wait()

    @staticmethod
    def split(total, parts, part):
        """The slice of range(total) that part `part` of `parts` takes."""
        return slice(total * part // parts, total * (part + 1) // parts)


@functools.lru_cache(maxsize=None)
def shared_lanes(n):
    """The process-wide Lanes of n threads (helper threads are started once and kept)."""
    return Lanes(n)
