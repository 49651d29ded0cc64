"""Result files that survive Ctrl-C, `kill -9` and concurrent writers: append-only logs, and
whole files replaced atomically (`atomic_file`).

Each append writes whole lines with one write() on a file opened O_APPEND, under an
exclusive flock, then fsyncs. A crash can at worst leave the last line cut short: readers
skip it (with a warning) and the next append first cuts it off, so every complete line
ever written stays readable.
"""
import contextlib
import fcntl
import json
import os
import warnings


class StoreError(OSError):
    """A results file or folder that cannot be read or written; says which and why."""


@contextlib.contextmanager
def _locked(path):
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        raise StoreError(f"cannot write results to {path}: {e.strerror}; choose a writable "
                         "location (e.g. --db/--out in your home folder)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        while not _still_at(fd, path):     # replaced (move_lines) while we waited: lock the new file
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _still_at(fd, path):
    """Whether the open file `fd` is still the file at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
    except OSError as e:
        raise StoreError(f"cannot lock {path}: {e.strerror}") from None


def _cut_partial_tail(fd):
    """Truncate a last line that a crash left without its newline."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    while pos > 0:
        chunk = os.pread(fd, min(4096, pos), max(0, pos - 4096))
        start = max(0, pos - 4096)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            os.ftruncate(fd, start + nl + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


@contextlib.contextmanager
def atomic_file(path, mode="w"):
    """Open a temporary file beside `path`; on a clean exit, flush it to disk and move it onto
    `path` in one step, so a reader (or a crash) never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path):
    """Fail now, with a clear StoreError, if results cannot be appended to `path` (creates it)."""
    with _locked(path):
        pass


def append_lines(path, lines, header=None):
    """Append text lines (no newlines inside) atomically; write `header` first if the file is new."""
    with _locked(path) as fd:
        _cut_partial_tail(fd)
        if header is not None and os.lseek(fd, 0, os.SEEK_END) == 0:
            lines = [header] + list(lines)
        data = "".join(line + "\n" for line in lines).encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)


def read_lines(path):
    """Complete lines of a file (a cut-off last line is skipped with a warning); [] if absent."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    if lines[-1]:
        warnings.warn(f"{path}: ignoring an incomplete last line (an interrupted write); "
                      "it will be cut off at the next append", stacklevel=2)
    try:
        return [line.decode() for line in lines[:-1]]
    except UnicodeDecodeError as e:
        raise StoreError(f"{path} is not a text results file ({e}); move it aside") from None


def rewrite_lines(path, transform):
    """Replace the complete lines of `path` by transform(lines), atomically and under its lock
    (appenders wait, then write to the new file); transform returns None to leave the file as
    it is. False if nothing was rewritten."""
    with _locked(path) as fd:
        _cut_partial_tail(fd)
        new = transform(read_lines(path))
        if new is None:
            return False
        with atomic_file(path) as f:
            f.write("".join(line + "\n" for line in new))
        _sync_folder(path)
        return True


def set_aside(path):
    """Rename `path` to `path`.bak, or .bak.2, .bak.3, ... if taken (never over an earlier one);
    the new name."""
    aside, n = path + ".bak", 1
    while os.path.exists(aside):
        n += 1
        aside = f"{path}.bak.{n}"
    os.replace(path, aside)
    return aside


def move_lines(path, choose, archive, header_lines=0):
    """Move some complete lines of `path` to the end of the gzip file `archive` (a new gzip
    member, fsynced), then replace `path` by the rest (rewrite_lines: atomically and under its
    lock). `choose(lines)` says, line by line, which move (one flag a line, or StoreError); the
    first `header_lines` never move and start each member instead. A crash between the two
    steps leaves the lines in both files, never in neither. Returns (moved, kept) line counts.
    Meant for a local disk: on NFS an appender may not see the new file."""
    import gzip
    if not os.path.exists(path):
        raise StoreError(f"no file {path} to archive from")
    counts = [0, 0]

    def transform(lines):
        flags = list(choose(lines))
        if len(flags) != len(lines):
            raise StoreError(f"{path}: {len(flags)} choices for {len(lines)} lines; nothing moved")
        flags[:header_lines] = [False] * min(header_lines, len(flags))
        out = [line for line, move in zip(lines, flags) if move]
        kept = [line for line, move in zip(lines, flags) if not move]
        counts[:] = len(out), len(kept)
        if not out:
            return None
        with open(archive, "ab") as raw:
            size = raw.seek(0, os.SEEK_END)
            try:
                with gzip.GzipFile(fileobj=raw, mode="wb") as z:
                    z.write("".join(line + "\n" for line in lines[:header_lines] + out).encode())
                raw.flush()
                os.fsync(raw.fileno())
            except BaseException as e:          # no half member: it would hide every later one
                raw.truncate(size)
                if isinstance(e, OSError):
                    raise StoreError(f"cannot write the archive {archive}: {e.strerror}") from None
                raise
        return kept
    rewrite_lines(path, transform)
    return tuple(counts)


def _sync_folder(path):
    """fsync the folder of `path`, so that a rename into it survives a power cut."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def append_json(path, records):
    append_lines(path, [json.dumps(r, sort_keys=True) for r in records])


def read_json(path):
    """Records of a JSON-lines file; malformed lines are skipped with a warning naming the line."""
    out = []
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            warnings.warn(f"{path}:{lineno}: not a JSON record, skipped", stacklevel=2)
            continue
        out.append(rec)
    return out
