"""Fleet tuning on Ray, on one machine: a local cluster of two nodes, one of them pretending to be
another CPU kind (SPARSEBENCH_FAKE_CPU in its node's environment). Skipped without Ray, with the
install hint."""
import collections
import json
import sys
import threading
import time
import warnings

import pytest

from sparsebench import fingerprint, store
from sparsebench.cli.main import main
from sparsebench.machine import ENV_FAKE_CPU
from sparsebench.peak import ENV_CACHE_DIR
from sparsebench.tune.apply import load_tuned
from sparsebench.tune.ray_runner import INSTALL_HINT, actor_name

ZEN5 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 26, "model": 2})
TINY = ["--shapes", "64x48x20", "--block", "4x1", "--max-evals", "3", "--samples", "3"]
SMALL_RAY = {"num_cpus": 1, "object_store_memory": 100 * 1024 ** 2, "include_dashboard": False}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two one-CPU Ray nodes on this machine; the second one a Zen 5. (cluster, its node id)."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.skip(INSTALL_HINT)
    cache = {ENV_CACHE_DIR: str(tmp_path_factory.mktemp("peak-cache"))}
    cluster = Cluster(initialize_head=True, head_node_args=dict(SMALL_RAY, env_vars=cache))
    zen5 = cluster.add_node(**dict(SMALL_RAY, env_vars=dict(cache, **{ENV_FAKE_CPU: ZEN5})))
    yield cluster, zen5.node_id
    cluster.shutdown()


@pytest.fixture
def ids(monkeypatch):
    """{"real": this machine's hardware id, "zen5": the fake node's}."""
    real = fingerprint.hardware_id()
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    zen5 = fingerprint.hardware_id()
    monkeypatch.delenv(ENV_FAKE_CPU)
    return {"real": real, "zen5": zen5}


def _tuned_once_per_kind(db, ids, sparsities):
    """Assert each task has one result per kind and no measurement is there twice."""
    records = store.read_json(str(db))
    results = collections.Counter((r["hardware_id"], r["task"]["sparsity"]) for r in records if r["kind"] == "result")
    assert results == {(hid, s): 1 for hid in ids.values() for s in sparsities}
    measured = collections.Counter((r["hardware_id"], json.dumps(r["task"], sort_keys=True),
                                    json.dumps(r["config"], sort_keys=True))
                                   for r in records if r["kind"] == "measurement")
    assert measured and max(measured.values()) == 1
    assert {r["cpu"] for r in records if r["hardware_id"] == ids["zen5"]} == {"AMD EPYC Zen 5 (family 26 model 2)"}
    return records


def _summary(printed, columns=5):
    """{hardware id: its last `columns` counts} of the per-kind summary table: [nodes,] tasks, tuned,
    already tuned, re-run, not tuned."""
    rows = printed.split("per CPU kind")[1].splitlines()[3:]
    return {row.split()[-8]: [int(x) for x in row.split()[-columns:]] for row in rows if row.count("  ") > 3}


def test_every_kind_is_tuned_once_gathered_resumed_and_exported(cluster, ids, tmp_path, capsys, monkeypatch):
    import ray

    db, out = tmp_path / "tuning.jsonl", tmp_path / "tuned.json"
    address = cluster[0].address
    assert not ray.is_initialized()
    assert main(["autotune", *TINY, "--sparsity", "0.5,0.7", "--db", str(db), "--ray", address]) == 0
    assert not ray.is_initialized()           # it connected, and disconnected at the end
    printed = capsys.readouterr().out
    assert "2 node(s), 2 CPU kind(s)" in printed and "Zen 5 (family 26 model 2)" in printed
    records = _tuned_once_per_kind(db, ids, [0.5, 0.7])
    assert main(["autotune", *TINY, "--sparsity", "0.5,0.7", "--db", str(db), "--ray", address]) == 0
    assert store.read_json(str(db)) == records                       # all already tuned: nothing added
    assert _summary(capsys.readouterr().out) == {hid: [2, 0, 2, 0, 0] for hid in ids.values()}
    assert main(["export", "--db", str(db), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["machines"]) == set(ids.values()) and data["hardware_id"] == ids["real"]
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_tuned(str(out)).entries == data["machines"][ids["zen5"]]["entries"]


def _interrupted_run(cluster, db, happened, what, interrupt):
    """Run the CLI on three tasks per kind in a thread of this driver; once `happened()`, call
    `interrupt()`; the run's exit code."""
    import ray

    ray.init(address=cluster.address, logging_level="error", log_to_driver=False)
    try:
        codes = []
        run = threading.Thread(target=lambda: codes.append(main(
            ["autotune", *TINY, "--sparsity", "0.5,0.6,0.7", "--db", str(db), "--ray", "auto"])))
        run.start()
        deadline = time.monotonic() + 120
        while not happened():
            assert time.monotonic() < deadline and run.is_alive(), f"never happened: {what}"
            time.sleep(0.02)
        interrupt()
        run.join(120)
        return codes[0]
    finally:
        ray.shutdown()


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(cluster, ids, tmp_path, capsys):
    import ray

    db = tmp_path / "tuning.jsonl"

    def zen5_finished_one():
        return any(r["kind"] == "result" and r["hardware_id"] == ids["zen5"] for r in store.read_json(str(db)))

    def kill_zen5_actor():                     # mid-run: its next task is in flight
        ray.kill(ray.get_actor(actor_name(cluster[1], 1)))

    assert _interrupted_run(cluster[0], db, zen5_finished_one, "a task of the Zen 5 node finished",
                            kill_zen5_actor) == 0
    printed = capsys.readouterr().out
    assert "worker lost during" in printed
    _tuned_once_per_kind(db, ids, [0.5, 0.6, 0.7])
    assert _summary(printed) == {ids["real"]: [3, 3, 0, 0, 0], ids["zen5"]: [3, 3, 0, 1, 0]}


def test_a_node_that_dies_mid_run_hands_its_task_to_another_of_its_kind(cluster, ids, tmp_path, capsys):
    import ray

    db = tmp_path / "tuning.jsonl"
    cache = {ENV_CACHE_DIR: str(tmp_path)}
    second_zen5 = cluster[0].add_node(**dict(SMALL_RAY, env_vars=dict(cache, **{ENV_FAKE_CPU: ZEN5})))

    def second_zen5_got_a_task():              # its actor is started when its first task is sent to it
        try:
            return bool(ray.get_actor(actor_name(second_zen5.node_id, 1)))
        except ValueError:
            return False

    assert _interrupted_run(cluster[0], db, second_zen5_got_a_task, "a task was sent to the second Zen 5",
                            lambda: cluster[0].remove_node(second_zen5)) == 0
    printed = capsys.readouterr().out
    assert "2 node(s) (" in printed and "is gone" in printed
    _tuned_once_per_kind(db, ids, [0.5, 0.6, 0.7])
    nodes_left, tasks, tuned, already, reruns, not_tuned = _summary(printed, 6)[ids["zen5"]]
    assert (nodes_left, tasks, tuned, already, not_tuned) == (1, 3, 3, 0, 0) and reruns >= 1


def test_without_ray_it_is_a_one_line_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["autotune", *TINY, "--sparsity", "0.5", "--db", str(tmp_path / "db.jsonl"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "sparsebench[ray]"' in err


@pytest.mark.parametrize("address", ["", "not an address", "10.0.0.1", "http://x:1"])
def test_a_bad_address_is_a_clear_error(address, capsys):
    with pytest.raises(SystemExit):
        main(["autotune", "--ray", address])
    assert "--ray takes 'auto', an address" in capsys.readouterr().err
