"""Token-major X (PyTorch's layout) as its own dimension of tuning: tasks, verification, export, lookup."""
import json
import warnings

import numpy as np
import pytest

import sparsebench as sb
from sparsebench.bench.shapes import Shape
from sparsebench.cli.main import main
from sparsebench.models.linear import SparseLinear
from sparsebench import cpu
from sparsebench.spmm import panel_tasks, reads_tokens
from sparsebench.tune import Autotuner, Task, TuningDB, autotune
from sparsebench.tune.apply import TunedConfigs, export, load_tuned
from sparsebench.tune.records import task_of
from sparsebench.tune.space import M_TILES

SMALL = Shape("small", 64, 48, 24)
QUIET = dict(samples=3, confirm_samples=3, log=lambda *a: None)


def _records(path):
    return [json.loads(line) for line in open(path)]


def test_task_keys_name_the_layout_only_when_token_major():
    features = Task(64, 48, 24, 0.7, (4, 1), "float32", 2)
    tokens = Task(64, 48, 24, 0.7, (4, 1), "float32", 2, "tokens")
    assert "layout" not in features.key()          # records of before token-major tuning still match
    assert tokens.key()["layout"] == "tokens" and tokens.key() != features.key()
    for task in (features, tokens):
        assert task_of({"task": task.key()}) == task
    assert str(tokens).endswith(" tokens")
    with pytest.raises(ValueError, match="layout"):
        task_of({"task": {**tokens.key(), "layout": "columns"}})


def test_token_major_candidates_are_checked_in_their_layout(tmp_path, monkeypatch):
    real = autotune.sparse_runner
    layouts = set()

    def wrong_without_prefetch(A, X, config, layout):
        layouts.add((layout, X.shape))
        run = real(A, X, config, layout)
        if config.prefetch:
            return run

        def wrong(out):
            run(out)
            out[-1, 0] += 1.0            # token N-1, feature 0: only a token-major check sees it there
            return out
        return wrong
    monkeypatch.setattr(autotune, "sparse_runner", wrong_without_prefetch)
    path = tmp_path / "db.jsonl"
    db = TuningDB(str(path), log=lambda *a: None)
    [res] = Autotuner(db, "exhaustive", **QUIET).tune_all([SMALL], [0.7], [(4, 1)], threads=1, layout="tokens")
    assert layouts == {("tokens", (24, 48))}              # X handed over token-major, N x K
    meas = [r for r in _records(path) if r["kind"] == "measurement" and r["method"] == "sparse"]
    assert all(r["task"]["layout"] == "tokens" for r in meas)
    wrong = [r for r in meas if r["status"] == "wrong"]
    assert wrong and all(r["config"]["prefetch"] == 0 for r in wrong)
    assert all(r["status"] == "ok" for r in meas if r["config"]["prefetch"])
    assert res["task"]["layout"] == "tokens" and (res["method"] == "dense" or res["config"]["prefetch"])


def _entry(layout, which):
    """A tuned entry for 64x48x24, sparsity 0.7, 4x1, with a valid config (`which`: first or last)."""
    W = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    A = sb.BSRMatrix.from_dense(sb.prune(W, 0.7, (4, 1)), (4, 1))
    config = sb.kernel_configs(A, 24, threads=1)[which]
    return {"M": 64, "K": 48, "N": 24, "sparsity": 0.7, "block": [4, 1], "dtype": "float32", "threads": 1,
            "method": "sparse", "config": config.to_dict(), **({"layout": layout} if layout else {})}, config


def test_lookup_prefers_the_asked_layout_and_falls_back_to_the_other():
    (old, feature_cfg), (tok, token_cfg) = _entry(None, 0), _entry("tokens", -1)
    table = TunedConfigs({"entries": [old, tok]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert table.lookup(64, 48, 24, 0.7, (4, 1), threads=1).config == feature_cfg
        found = table.lookup(64, 48, 24, 0.7, (4, 1), threads=1, layout="tokens")
        assert found.config == token_cfg and found.exact and found.note == "tuned"
        only_features = TunedConfigs({"entries": [old]}).lookup(64, 48, 24, 0.7, (4, 1), threads=1, layout="tokens")
    assert only_features.config == feature_cfg and "features-major" in only_features.note


def test_models_plan_token_major_calls_with_the_token_major_entry():
    (old, feature_cfg), (tok, token_cfg) = _entry(None, 0), _entry("tokens", -1)
    W = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    layer = SparseLinear(W, sparsity=0.7, tuned=TunedConfigs({"entries": [old, tok]}), threads=1)
    assert layer.plan(24).config == feature_cfg and layer.plan(24, "tokens").config == token_cfg
    X = np.random.default_rng(2).standard_normal((24, 48)).astype(np.float32)
    Y = layer.matmul(X, layout="tokens")
    assert layer.kernel == str(token_cfg)
    np.testing.assert_allclose(Y, (layer.A.to_dense().astype(np.float64) @ X.T.astype(np.float64)).T,
                               rtol=1e-4, atol=1e-4)


def test_autotune_cli_tunes_and_exports_token_major(tmp_path, capsys):
    db, out = str(tmp_path / "db.jsonl"), str(tmp_path / "tuned.json")
    common = ["--shapes", "64x48x24", "--sparsity", "0.7", "--threads", "1", "--db", db, "--max-evals", "2",
              "--samples", "3"]
    assert main(["autotune", *common, "--layout", "tokens"]) in (None, 0)
    assert "tokens-major X" in capsys.readouterr().out
    assert main(["autotune", *common]) in (None, 0)
    assert main(["export", "--db", db, "--out", out]) in (None, 0)
    layouts = sorted(e["layout"] for e in load_tuned(out).entries)
    assert layouts == ["features", "tokens"]
    assert len(export(TuningDB(db, log=lambda *a: None), out)["entries"]) == 2
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) in (None, 0)
    md = open(tmp_path / "report" / "report.md").read()
    rows = [line for line in md.splitlines() if line.startswith("| 64x48x24 | 64×48×24 | 4x1 |")]
    assert sorted(line.split(" | ")[3] for line in rows) == ["features", "tokens"]   # two tasks, not one


def test_compare_runs_sparsebench_tokens_with_its_token_major_config():
    from sparsebench.bench.compare import Compare
    (_, feature_cfg), (_, token_cfg) = _entry(None, 0), _entry("tokens", -1)
    asked = []

    def config_for(A, n, s, layout="features"):
        asked.append(layout)
        return token_cfg if layout == "tokens" else feature_cfg
    cmp = Compare(["sparsebench", "sparsebench-tokens"], threads=1, samples=3, log=lambda *a: None,
                  config_for=config_for)
    rows = {r["method"]: r for r in cmp.run([SMALL], [0.7], [(4, 1)])}
    assert all(r["status"] == "ok" for r in rows.values())
    assert rows["sparsebench"]["config"] == str(feature_cfg)
    assert rows["sparsebench-tokens"]["config"] == str(token_cfg)
    assert set(asked) == {"features", "tokens"}          # (a case measured degraded runs again)


def test_lookup_keeps_to_the_layout_among_near_shapes_and_files_say_their_version(tmp_path):
    (old, feature_cfg), (tok, token_cfg) = _entry(None, 0), _entry("tokens", -1)
    # the same shape a step away tuned in both layouts: each layout takes its own
    table = TunedConfigs({"entries": [{**old, "N": 32}, {**tok, "N": 32}]}, "t.json")
    with pytest.warns(UserWarning, match=r"tuned for 64x48x32 sparsity 0.7 \(t.json"):
        assert table.lookup(64, 48, 28, 0.7, (4, 1), threads=1, layout="tokens").config == token_cfg
    with pytest.warns(UserWarning, match=r"tuned for 64x48x32 sparsity 0.7 \(t.json"):
        assert table.lookup(64, 48, 28, 0.7, (4, 1), threads=1).config == feature_cfg
    path = tmp_path / "tuned.json"
    for version, entries, ok in ((1, [old], True), (2, [old, tok], True), (3, [old, tok], True),
                                 (2, [{**tok, "layout": "cols"}], False), (4, [old], False)):
        path.write_text(json.dumps({"format": "sparsebench-tuned", "version": version, "entries": entries}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ok:
                table = load_tuned(str(path))
                assert table.lookup(64, 48, 24, 0.7, (4, 1), threads=1).config == feature_cfg
                # version 2's token-major float32 configs meant another path: left out
                assert len(table.entries) == len(entries) - (version == 2 and tok in entries)
            else:
                with pytest.raises(sb.errors.ConfigError, match="layout|version"):
                    load_tuned(str(path))
    path.write_text(json.dumps({"format": "sparsebench-tuned", "version": 2, "entries": [old, tok]}))
    with pytest.warns(UserWarning, match="1 token-major float32 entries of tuned-config version 2 left out"):
        load_tuned(str(path))


#: token-major panel widths of the 64-token tile, by (N, threads): one tile, two, four, N split
#: evenly in whole tiles (a panel a thread at least) and the cache panels, up to the even split
TOKEN_PANELS_OF_64 = {(128, 2): {64}, (128, 1): {64, 128}, (384, 2): {64, 128, 192},
                      (1024, 2): {64, 128, 256, 512}, (40, 2): set()}


@pytest.mark.parametrize("N, threads", list(TOKEN_PANELS_OF_64))
def test_token_major_space_has_panel_tasks_and_x_transposed_first(N, threads):
    """Token-major without K slices: n_panel 0 transposes X whole first (every task size), an
    n_panel is a panel task (no task size); K slices keep every knob."""
    from sparsebench.spmm import even_panel
    W = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    A = sb.BSRMatrix.from_dense(sb.prune(W, 0.7, (4, 1)), (4, 1))
    tokens = sb.kernel_configs(A, N, threads=threads, layout="tokens")
    assert len(set(tokens)) == len(tokens)
    for isa, nt in {(c.isa, c.n_tile) for c in tokens if not c.k_slice and not reads_tokens(A, c)}:
        whole = [c for c in tokens if (c.isa, c.n_tile) == (isa, nt) and not c.k_slice]
        assert {c.m_tile for c in whole if not c.n_panel} == set(M_TILES)
        panels = {c.n_panel for c in whole if c.n_panel}
        assert all(panel_tasks(A, c) and not c.m_tile for c in whole if c.n_panel)
        if nt == 64:
            assert panels == TOKEN_PANELS_OF_64[N, threads]
        assert all(p % nt == 0 and -(-N // p) >= threads for p in panels)
        assert not panels or max(panels) == even_panel(nt, N, threads)
    assert any(c.k_slice and c.m_tile and c.n_panel for c in tokens) == (N > 128)


@pytest.mark.parametrize("n_tile, n, threads, even", [(64, 128, 2, 64), (64, 384, 2, 192), (48, 1024, 2, 528),
                                                       (32, 130, 4, 32), (64, 40, 2, 0), (64, 40, 1, 64),
                                                       (16, 100, 3, 48)])
def test_even_panel_gives_every_thread_a_panel_in_whole_tiles(n_tile, n, threads, even):
    """Rounded up where that still leaves a panel a thread (1024 / 2 in tiles of 48: 528 + 496),
    else down (130 on 4 threads in tiles of 32: 64 would make 3 panels, 32 makes 5); none if
    neither gives a panel a thread."""
    from sparsebench.spmm import even_panel
    assert even_panel(n_tile, n, threads) == even


def test_a_panel_config_used_for_fewer_tokens_or_more_threads_keeps_every_thread_busy():
    """A config tuned with wide panels, run where they would leave threads idle, narrows them
    (spmm.panel_width), or transposes X whole when no width in whole tiles gives each thread a
    panel; the same bits."""
    from sparsebench.spmm import panel_width
    A = sb.BSRMatrix.from_dense(sb.prune(np.random.default_rng(2).standard_normal((64, 96)).astype(np.float32),
                                         0.6, (4, 1)), (4, 1))
    isa = cpu.best_isa()
    wide = max(nt for br, bc, nt, *_ in cpu.kernel_module(isa).VARIANTS if (br, bc) == (4, 1))
    for threads, n_tile, cases in ((2, 16, ((1024, 512), (300, 160), (64, 32), (24, 16), (12, 0))),
                                   (1, wide, ((40, 40), (wide + 3, wide + 3), (3 * wide, 3 * wide)))):
        cfg = sb.KernelConfig((4, 1), isa, n_tile, 512 if n_tile == 16 else 4 * wide, threads=threads)
        assert panel_tasks(A, cfg)
        for N, width in cases:                          # one thread: one panel of all N, never wider
            assert panel_width(cfg, N) == width
            Xt = np.random.default_rng(N).standard_normal((N, 96)).astype(np.float32)
            want = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg)
            assert np.array_equal(sb.spmm(A, Xt, cfg, layout="tokens"), want.T), (threads, N)


def test_token_major_space_keeps_only_the_task_size_of_the_direct_kernel():
    """Blocks of one vector of outputs read token-major X directly (spmm.reads_tokens) with a
    tile of one vector: panel and prefetch play no part there, so one config per ISA and task
    size is left; wider tiles run as panel tasks, for the tuner to pick between them."""
    isa = cpu.best_isa()
    vw = cpu.kernel_module(isa).VECTOR_WIDTH
    W = np.random.default_rng(1).standard_normal((4 * vw, 256)).astype(np.float32)
    A = sb.BSRMatrix.from_dense(sb.prune(W, 0.7, (vw, 1)), (vw, 1))
    configs = [c for c in sb.kernel_configs(A, 128, threads=2, isas=[isa], layout="tokens") if not c.k_slice]
    direct = [c for c in configs if c.n_tile == vw]
    assert direct and all(reads_tokens(A, c) and not c.n_panel and not c.prefetch for c in direct)
    assert len({c.m_tile for c in direct}) == len(direct) > 1
    assert any(panel_tasks(A, c) for c in configs if c.n_tile > vw)


def test_compare_prints_token_major_over_feature_major(tmp_path, capsys):
    assert main(["compare", "--shapes", "64x48x24", "--sparsity", "0.7", "--threads", "1", "--samples", "3",
                 "--methods", "sparsebench,sparsebench-tokens", "--out", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("token-major X and Y"):]
    assert "token / feature" in table and "64x48x24" in table.splitlines()[3]
