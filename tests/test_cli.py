"""The command line: info, bench on a tiny shape, and clear errors for bad arguments."""
import csv
import json

import pytest

from sparsebench.cli.main import main


def test_info_json_lists_variants_and_flags(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["isas_available"] and info["default_threads"] >= 1
    assert set(info["build"]["flags"]) == set(info["build"]["isas"])
    best = info["isas_available"][0]
    assert any(v.startswith("4x1/") for v in info["variants"][best])


def test_bench_is_run_with_the_exhaustive_tuner_heuristic_and_dense(tmp_path, capsys):
    assert main(["bench", "--shapes", "64x48x20", "--sparsity", "0.5", "--block", "4x1",
                 "--threads", "1", "--results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "--strategy exhaustive" in printed and "call overhead" in printed
    rows = list(csv.DictReader(open(tmp_path / "compare-64x48x20.csv")))
    assert {r["method"] for r in rows} == {"dense", "sparsebench", "sparsebench-default"}
    assert all(r["status"] == "ok" and float(r["max_rel_error"]) < 1e-5 for r in rows)
    tuned = json.load(open(tmp_path / "tuned.json"))["entries"]
    assert len(tuned) == 1 and tuned[0]["strategy"] == "exhaustive"


@pytest.mark.parametrize("argv, message", [
    (["bench", "--sparsity", "1.5"], "sparsity must be in"),
    (["bench", "--block", "3x3"], "unsupported block shape 3x3"),
    (["bench", "--threads", "0"], "positive integer"),
])
def test_bad_arguments_are_explained(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_shape_file_is_a_clear_error(capsys):
    assert main(["bench", "--shapes", "no-such-set"]) == 2
    assert "no shape file or set named 'no-such-set'" in capsys.readouterr().err


def test_malformed_shape_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,M,K,N\nok,4,4,4\nbroken,4,x,4\n")
    assert main(["bench", "--shapes", str(bad)]) == 2
    assert f"{bad}:3" in capsys.readouterr().err
