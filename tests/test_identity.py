"""CPU identity: the fingerprint tells CPU kinds apart, and records of another kind are never used silently."""
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest

from sparsebench import fingerprint
from sparsebench._buildinfo import BUILD
from sparsebench.bench.shapes import Shape
from sparsebench.cli.info import collect, format_info
from sparsebench.machine import ENV_FAKE_CPU, cpu_identity, cpu_label, uarch_name
from sparsebench.tune import Autotuner, TuningDB
from sparsebench.tune.apply import ForeignTunedWarning, export, load_tuned

X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
ZEN4 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 25, "model": 17})
ZEN5 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 26, "model": 2})


def test_identity_fields_are_present_and_sane():
    ident = fingerprint.hardware()
    for key in ("vendor", "brand", "family", "model", "stepping", "uarch", "caches", "cores", "threads", "isa"):
        assert key in ident, key
    assert ident["vendor"] and isinstance(ident["vendor"], str)
    assert ident["threads"] >= 1 and (ident["cores"] is None or 1 <= ident["cores"] <= ident["threads"])
    assert set(ident["caches"]) == {"L1d", "L1i", "L2", "L3"}
    if X86:
        assert all(isinstance(ident[k], int) for k in ("family", "model", "stepping"))
        if sys.platform.startswith("linux"):
            assert ident["caches"]["L2"] > 0 and ident["caches"]["L1d"] > 0


@pytest.mark.parametrize("vendor, family, model, name", [
    ("AuthenticAMD", 0x17, 0x01, "Zen"), ("AuthenticAMD", 0x17, 0x08, "Zen+"),
    ("AuthenticAMD", 0x17, 0x31, "Zen 2"), ("AuthenticAMD", 0x19, 0x01, "Zen 3"),
    ("AuthenticAMD", 0x19, 0x11, "Zen 4"), ("AuthenticAMD", 0x19, 0x61, "Zen 4"),
    ("AuthenticAMD", 0x19, 0xA0, "Zen 4"), ("AuthenticAMD", 0x1A, 0x02, "Zen 5"),
    ("GenuineIntel", 6, 0x55, "Skylake-SP/Cascade Lake"), ("GenuineIntel", 6, 0x6A, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, "Sapphire Rapids"), ("GenuineIntel", 6, 0xCF, "Emerald Rapids"),
    ("GenuineIntel", 6, 0xAD, "Granite Rapids"), ("GenuineIntel", 6, 0x01, "unknown"),
    ("AuthenticAMD", 0x19, 0x11 + 0x100, "unknown"), ("0x41", 8, 0xD0C, "unknown"), ("ARM", None, None, "unknown"),
])
def test_uarch_table(vendor, family, model, name):
    assert uarch_name(vendor, family, model) == name


def test_fake_cpu_changes_the_hardware_id_and_label(monkeypatch):
    real_id = fingerprint.hardware_id()
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    zen4_id, zen4 = fingerprint.hardware_id(), cpu_identity()
    assert zen4["uarch"] == "Zen 4" and cpu_label() == "AMD EPYC Zen 4 (family 25 model 17)"
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    assert fingerprint.hardware_id() != zen4_id and cpu_identity()["uarch"] == "Zen 5"
    monkeypatch.setenv(ENV_FAKE_CPU, json.dumps({"uarch": "Test Lake"}))
    assert cpu_identity()["uarch"] == "Test Lake"
    monkeypatch.delenv(ENV_FAKE_CPU)
    assert fingerprint.hardware_id() == real_id


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_fake_cpu_must_be_a_json_object(monkeypatch, bad):
    monkeypatch.setenv(ENV_FAKE_CPU, bad)
    with pytest.raises(ValueError, match=f"{ENV_FAKE_CPU} .*JSON object"):
        cpu_identity()


def test_build_records_what_mtune_resolved_to():
    assert BUILD["tune"] and fingerprint.build()["tune"] == BUILD["tune"]
    assert fingerprint.build("float32")["tune"] == BUILD["tune"]


def test_float32_build_id_carries_the_config_rules_and_int8_does_not(monkeypatch):
    """A change of what a float32 config runs (config.FLOAT32_CONFIG_RULES) makes another float32
    build id, so its tuning records are not reused; the int8 build id does not move with it."""
    from sparsebench import config
    assert fingerprint.build("float32")["config_rules"] == config.FLOAT32_CONFIG_RULES
    assert "config_rules" not in fingerprint.build("int8")
    before = fingerprint.build_id("float32"), fingerprint.build_id("int8")
    monkeypatch.setattr(fingerprint, "FLOAT32_CONFIG_RULES", config.FLOAT32_CONFIG_RULES + 1)
    assert fingerprint.build_id("float32") != before[0] and fingerprint.build_id("int8") == before[1]


def _tune(path):
    db = TuningDB(str(path), log=lambda *a: None)
    tuner = Autotuner(db, "smart", max_evals=2, samples=3, confirm_samples=3, log=lambda *a: None)
    tuner.tune_all([Shape("small", 64, 48, 24)], [0.7], [(4, 1)], threads=1)
    return db


def test_records_of_another_cpu_kind_are_ignored_naming_whose(tmp_path, monkeypatch):
    path = tmp_path / "db.jsonl"
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    written = _tune(path)
    assert written.records and all(r["cpu"] == "AMD EPYC Zen 4 (family 25 model 17)" for r in written.records)
    assert TuningDB(str(path), log=lambda *a: None).ignored == 0
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    said = []
    db = TuningDB(str(path), log=said.append)
    assert not db.records and db.ignored == len(written.records)
    assert (f"{db.ignored} records from another machine or build ignored: {db.ignored} from hardware "
            f"{written.hardware_id} (AMD EPYC Zen 4 (family 25 model 17))") in said[0]
    assert "Zen 5" in said[0] and "--use-foreign" in said[0]
    assert TuningDB(str(path), foreign=True, log=said.append).records


def test_records_without_cpu_identity_are_foreign(tmp_path):
    path = tmp_path / "db.jsonl"
    db = _tune(path)
    recs = [json.loads(line) for line in open(path)]
    old = [{k: v for k, v in r.items() if k != "cpu"} for r in recs[:2]]
    path.write_text("".join(json.dumps(r) + "\n" for r in old + recs[2:]))
    said = []
    again = TuningDB(str(path), log=said.append)
    assert again.ignored == 2 and len(again.records) == len(db.records) - 2
    assert "2 from an older sparsebench without CPU identity" in said[0]


def test_export_names_the_cpu_and_load_tuned_warns_on_another(tmp_path, monkeypatch):
    path, out = tmp_path / "db.jsonl", tmp_path / "tuned.json"
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    _tune(path)
    data = export(TuningDB(str(path), writable=False), str(out))
    assert data["cpu"] == "AMD EPYC Zen 4 (family 25 model 17)"
    assert data["hardware"]["uarch"] == "Zen 4" and data["hardware_id"] == fingerprint.hardware_id()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_tuned(str(out))
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    with pytest.warns(ForeignTunedWarning, match=r"tuned on another machine \(hardware \w+, AMD EPYC Zen 4 .*Zen 5") as got:
        load_tuned(str(out))
    assert "\n" not in str(got[0].message)
    del data["cpu"]
    out.write_text(json.dumps(data))
    with pytest.warns(ForeignTunedWarning, match="no CPU identity"):
        load_tuned(str(out))


def _autotune(db, fake):
    cmd = [sys.executable, "-m", "sparsebench.cli", "autotune", "--shapes", "64x48x20", "--sparsity", "0.5",
           "--block", "4x1", "--max-evals", "3", "--threads", "1", "--samples", "3", "--db", str(db)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, ENV_FAKE_CPU: fake})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_autotune_on_another_cpu_kind_tunes_afresh(tmp_path):
    db = tmp_path / "tuning.jsonl"
    assert "already tuned" not in _autotune(db, ZEN4)
    assert "already tuned" in _autotune(db, ZEN4)
    out = _autotune(db, ZEN5)
    assert "already tuned" not in out
    assert "records from another machine or build ignored" in out and "Zen 4 (family 25 model 17)" in out
    cpus = {json.loads(line)["cpu"] for line in open(db)}
    assert cpus == {"AMD EPYC Zen 4 (family 25 model 17)", "AMD EPYC Zen 5 (family 26 model 2)"}


def test_info_shows_the_identity(capsys):
    info = collect()
    assert info["cpu_identity"] == cpu_identity() and info["tune"] == BUILD["tune"]
    text = format_info(info)
    assert f"Hardware id:    {fingerprint.hardware_id()}" in text
    assert f"-mtune resolved to {BUILD['tune']}" in text and "Caches:" in text and "Cores/threads:" in text


def test_results_folder_is_named_after_the_cpu(monkeypatch):
    from sparsebench.cli.main import build_parser
    from sparsebench.machine import cpu_slug, results_folder

    monkeypatch.setenv(ENV_FAKE_CPU, ZEN4)
    assert results_folder() == os.path.join("results", "amd-epyc-zen4-f25m17")
    assert results_folder("elsewhere").startswith("elsewhere" + os.sep)
    assert build_parser().parse_args(["autotune"]).db == os.path.join("results", "amd-epyc-zen4-f25m17", "tuning.jsonl")
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    assert results_folder() == os.path.join("results", "amd-epyc-zen5-f26m2")
    assert build_parser().parse_args(["export"]).out == os.path.join("results", "amd-epyc-zen5-f26m2", "tuned.json")
    assert cpu_slug({"brand": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "uarch": "Ice Lake-SP",
                     "family": 6, "model": 106}) == "intel-xeon-platinum-8375c-icelake-sp-f6m106"
    assert cpu_slug({"brand": None, "vendor": "ARM", "uarch": "unknown", "family": None, "model": None}) == "arm"
