"""One database for several CPU kinds (what a Ray fleet run gathers): reading other kinds' records
when asked, appending their records as stamped, and a tuned-config section per kind."""
import json
import os
import warnings

import pytest

from sparsebench import fingerprint, store
from sparsebench.bench.shapes import Shape
from sparsebench.cli.main import main
from sparsebench.machine import ENV_FAKE_CPU
from sparsebench.tune import Autotuner, Task, TuningDB
from sparsebench.tune.apply import ForeignTunedWarning, export, load_tuned
from sparsebench.tune.records import newest_builds

ZEN4 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 25, "model": 17})
ZEN5 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 26, "model": 2})
INTEL = json.dumps({"vendor": "GenuineIntel", "brand": "Intel Xeon", "family": 6, "model": 143})
TASK = Task(64, 48, 20, 0.7, (4, 1), "float32", 1)


def _tune_as(path, fake, monkeypatch):
    """Tune TASK into `path` pretending to be the CPU `fake`; (hardware id, build ids)."""
    monkeypatch.setenv(ENV_FAKE_CPU, fake)
    db = TuningDB(str(path), log=lambda *a: None)
    Autotuner(db, "smart", max_evals=2, samples=3, confirm_samples=3, log=lambda *a: None).tune_all(
        [Shape("small", 64, 48, 20)], [0.7], [(4, 1)], threads=1)
    return db.hardware_id, db.build_ids


@pytest.fixture
def two_kinds(tmp_path, monkeypatch):
    """A database with TASK tuned on a Zen 4 and on a Zen 5; (path, {name: (hardware id, builds)})."""
    path = tmp_path / "tuning.jsonl"
    kinds = {"zen5": _tune_as(path, ZEN5, monkeypatch), "zen4": _tune_as(path, ZEN4, monkeypatch)}
    return path, kinds


def test_other_kinds_are_read_only_when_asked(two_kinds):
    path, kinds = two_kinds
    zen4_id, zen5_id = kinds["zen4"][0], kinds["zen5"][0]
    mine = TuningDB(str(path), log=lambda *a: None)
    assert {r["hardware_id"] for r in mine.records} == {zen4_id} and mine.ignored
    both = TuningDB(str(path), log=lambda *a: None, hardware_ids=dict([kinds["zen5"]]))
    assert {r["hardware_id"] for r in both.records} == {zen4_id, zen5_id} and not both.ignored
    assert [r["hardware_id"] for r in both.results(TASK, hardware_id=zen5_id)] == [zen5_id]
    assert len(both.results(TASK)) == 2
    assert {r["hardware_id"] for r in both.measurements(TASK, zen5_id).values()} == {zen5_id}
    other_build = TuningDB(str(path), log=lambda *a: None, hardware_ids={zen5_id: {"float32": "0123456789ab"}})
    assert {r["hardware_id"] for r in other_build.records} == {zen4_id}
    assert newest_builds(str(path)) == {hid: {"float32": builds["float32"]} for hid, builds in kinds.values()}


def test_records_stamped_elsewhere_are_appended_as_they_are(two_kinds, tmp_path):
    path, kinds = two_kinds
    zen5_id = kinds["zen5"][0]
    zen5_records = [r for r in store.read_json(str(path)) if r["hardware_id"] == zen5_id]
    gathered = TuningDB(str(tmp_path / "gathered.jsonl"), hardware_ids=dict([kinds["zen5"]]))
    gathered.add_stamped(zen5_records)
    assert store.read_json(gathered.path) == zen5_records and gathered.records == zen5_records
    mine_only = TuningDB(str(tmp_path / "mine.jsonl"))
    mine_only.add_stamped(zen5_records)
    assert store.read_json(mine_only.path) == zen5_records and not mine_only.records


def test_export_writes_a_section_per_kind_and_load_tuned_picks_this_one(two_kinds, tmp_path, monkeypatch, capsys):
    path, kinds = two_kinds
    out = tmp_path / "tuned.json"
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    assert main(["export", "--db", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 tuned tasks of this machine" in printed and "Zen 5 (family 26 model 2)" in printed
    data = json.loads(out.read_text())
    assert set(data["machines"]) == {kinds["zen4"][0], kinds["zen5"][0]}
    assert data["hardware_id"] == kinds["zen4"][0] and data["entries"] == data["machines"][kinds["zen4"][0]]["entries"]
    assert data["machines"][kinds["zen5"][0]]["cpu"] == "AMD EPYC Zen 5 (family 26 model 2)"
    for fake, kind in ((ZEN4, "zen4"), (ZEN5, "zen5")):
        monkeypatch.setenv(ENV_FAKE_CPU, fake)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tuned = load_tuned(str(out))
        assert tuned.entries == data["machines"][kinds[kind][0]]["entries"]
    monkeypatch.setenv(ENV_FAKE_CPU, INTEL)
    with pytest.warns(ForeignTunedWarning, match="tuned on another machine .*Zen 4.*; it holds tuned configs for "
                      ".*Zen 5.* only") as got:
        tuned = load_tuned(str(out))
    assert "\n" not in str(got[0].message) and tuned.entries == data["entries"]


def test_an_export_without_this_machine_has_empty_entries_and_warns(two_kinds, tmp_path, monkeypatch):
    path, kinds = two_kinds
    out = tmp_path / "tuned.json"
    monkeypatch.setenv(ENV_FAKE_CPU, INTEL)
    data = export(TuningDB(str(path), writable=False, hardware_ids=newest_builds(str(path))), str(out))
    assert data["entries"] == [] and data["hardware_id"] == fingerprint.hardware_id() and len(data["machines"]) == 2
    with pytest.warns(ForeignTunedWarning, match="has no tuned configs for this machine .*Intel Xeon"):
        load_tuned(str(out))


def test_malformed_sections_are_clear_errors(two_kinds, tmp_path, monkeypatch):
    from sparsebench.errors import ConfigError

    path, _ = two_kinds
    out = tmp_path / "tuned.json"
    data = export(TuningDB(str(path), writable=False, log=lambda *a: None), str(out))
    for bad in ([], {"x": {"cpu": "?"}}, {"x": {"entries": [{"method": "sparse"}]}}):
        out.write_text(json.dumps(dict(data, machines=bad)))
        with pytest.raises(ConfigError, match="malformed entry"):
            load_tuned(str(out))


def test_archive_moves_older_builds_and_loses_nothing(two_kinds, monkeypatch, capsys):
    """Records of an older build of each kind, and records without CPU identity, go to the gzipped
    archive; each kind's newest build stays, so the tuner and export see the same as before."""
    import gzip
    from sparsebench.tune.records import archive_path
    path, kinds = two_kinds
    zen4_id = kinds["zen4"][0]
    current = store.read_json(str(path))
    old_build = [dict(r, build_id="fedcba987654", timestamp="2026-01-01T00:00:00") for r in current[:3]]
    no_identity = [{k: v for k, v in r.items() if k not in ("cpu", "hardware_id", "build_id")} for r in current[:2]]
    lines = store.read_lines(str(path))
    with open(path, "w") as f:                     # older records first, as a database grows
        f.write("".join(json.dumps(r) + "\n" for r in no_identity + old_build) + "\n".join(lines) + "\nnot json\n")
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    before = TuningDB(str(path), log=lambda *a: None).records
    assert main(["archive", "--db", str(path)]) == 0
    assert f"moved 5 records of older builds (or without CPU identity) to {archive_path(str(path))}" in capsys.readouterr().out
    assert store.read_lines(str(path)) == lines + ["not json"]
    with gzip.open(archive_path(str(path)), "rt") as f:
        assert [json.loads(line) for line in f] == no_identity + old_build
    after = TuningDB(str(path), log=lambda *a: None)
    assert after.records == before and not after.ignored_reasons.get("from build fedcba987654")
    assert {r["hardware_id"] for r in after.records} == {zen4_id}
    assert main(["archive", "--db", str(path)]) == 0          # again: nothing left to move
    assert "nothing to archive" in capsys.readouterr().out
    with gzip.open(archive_path(str(path)), "rt") as f:
        assert len(f.readlines()) == 5


def test_an_append_waiting_on_the_lock_goes_to_the_replaced_file(tmp_path, monkeypatch):
    """move_lines replaces the file while holding its lock; an appender that waited on the old
    file's lock must write into the new one, not the unlinked old one."""
    import fcntl
    import threading
    path = str(tmp_path / "db.jsonl")
    store.append_lines(path, ["keep", "move"])
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)                     # hold the old file's lock
    waiting = threading.Event()
    real_flock = fcntl.flock

    def flock(f, op):                                  # the writer, about to wait on the old file
        if threading.current_thread() is writer:
            waiting.set()
        return real_flock(f, op)
    monkeypatch.setattr(store.fcntl, "flock", flock)
    writer = threading.Thread(target=store.append_lines, args=(path, ["late"]))
    writer.start()
    assert waiting.wait(10)
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write("keep\n")
    os.replace(tmp, path)                               # as move_lines does, under the lock
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    writer.join(10)
    assert store.read_lines(path) == ["keep", "late"]


def test_a_failed_archive_write_leaves_no_half_member(tmp_path, monkeypatch):
    """An error while the gzip member is written truncates the archive back: what was archived
    before stays readable, and the database keeps every line."""
    import gzip
    path, archive = str(tmp_path / "db.jsonl"), str(tmp_path / "db-archive.jsonl.gz")
    store.append_lines(path, ["a", "b"])
    assert store.move_lines(path, lambda lines: [line == "a" for line in lines], archive) == (1, 1)
    store.append_lines(path, ["c"])

    class Full(gzip.GzipFile):
        def write(self, data):
            super().write(data[:3])
            self.fileobj.write(b"partial")
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(gzip, "GzipFile", Full)
    with pytest.raises(store.StoreError, match="cannot write the archive .*No space left"):
        store.move_lines(path, lambda lines: [True] * len(lines), archive)
    monkeypatch.undo()
    assert store.read_lines(path) == ["b", "c"]
    with gzip.open(archive, "rt") as f:
        assert f.read() == "a\n"
    with pytest.raises(store.StoreError, match="no file"):
        store.move_lines(str(tmp_path / "none.jsonl"), lambda lines: [], archive)
