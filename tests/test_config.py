"""KernelConfig value semantics, the kernel_configs search space, and default_config."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from sparsebench.config import check_config
from sparsebench.tune.space import PANELS
from conftest import SUPPORTED_BLOCKS, assert_spmm_close, examples, random_pruned, random_x

block_ids = lambda b: "%dx%d" % b          # noqa: E731

kernel_config_values = st.builds(
    sb.KernelConfig,
    block=st.sampled_from(SUPPORTED_BLOCKS),
    isa=st.sampled_from(["avx512", "avx2", "generic"]),
    n_tile=st.sampled_from([4, 8, 16, 24, 32, 48, 64, 96, 128]),
    n_panel=st.sampled_from([0, 128, 256, 512]),
    m_tile=st.sampled_from([0, 1, 4, 16]),
    prefetch=st.sampled_from([0, 4, 16]),
    threads=st.integers(1, 64),
)


# -- KernelConfig -------------------------------------------------------------------------------

@settings(max_examples=examples(200), deadline=None)
@given(cfg=kernel_config_values)
def test_json_and_dict_round_trip(cfg):
    text = cfg.to_json()
    assert json.loads(text) == cfg.to_dict()
    back = sb.KernelConfig.from_json(text)
    assert back == cfg and hash(back) == hash(cfg) and back.to_json() == text
    assert isinstance(back.block, tuple)
    assert sb.KernelConfig.from_dict(cfg.to_dict()) == cfg


def test_to_dict_is_plain_json_data():
    cfg = sb.KernelConfig((4, 1), "avx2", 16, n_panel=128, k_slice=64, m_tile=4, prefetch=16, threads=2)
    assert cfg.to_dict() == {"block": [4, 1], "isa": "avx2", "n_tile": 16, "n_panel": 128,
                             "k_slice": 64, "m_tile": 4, "prefetch": 16, "threads": 2}
    assert cfg.to_json() == json.dumps(cfg.to_dict(), sort_keys=True)
    assert str(cfg) == "avx2/b4x1/nt16/np128/ks64/mt4/pf16/t2"


def test_defaults_of_optional_fields():
    cfg = sb.KernelConfig.from_dict({"block": [8, 1], "isa": "generic", "n_tile": 8})
    assert (cfg.n_panel, cfg.m_tile, cfg.prefetch, cfg.threads) == (0, 0, 0, 1)


def test_equality_and_hash_normalise_block():
    a = sb.KernelConfig((4, 1), "generic", 8)
    b = sb.KernelConfig([4, 1], "generic", 8)
    c = sb.KernelConfig(np.array([4, 1]), "generic", 8)
    assert a == b == c and hash(a) == hash(b) == hash(c)
    assert type(c.block[0]) is int
    assert len({a, b, c}) == 1
    assert {a: 1}[b] == 1
    assert a != sb.KernelConfig((4, 1), "generic", 8, threads=2)
    assert a != sb.KernelConfig((1, 4), "generic", 8)


def test_configs_are_orderable():
    _, A = random_pruned(16, 16, (4, 1), 0.5)
    cfgs = sb.kernel_configs(A, 300, threads=2)
    assert sorted(cfgs) == sorted(reversed(cfgs))


# -- kernel_configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 5, 16, 19, 33, 128, 129, 300, 1024])
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_kernel_configs_are_all_valid(block, n):
    _, A = random_pruned(20, 20, block, 0.5)
    cfgs = sb.kernel_configs(A, n, threads=3)
    assert cfgs
    assert len(set(cfgs)) == len(cfgs), "duplicate configs"
    assert {c.isa for c in cfgs} == set(cpu.available_isas())
    for c in cfgs:
        assert isinstance(c, sb.KernelConfig)
        assert c.block == block and c.threads == 3
        check_config(c, A)                                   # raises if invalid
        assert c.n_panel == 0 or (c.n_panel % c.n_tile == 0 and c.n_panel < n)
        # tiles much wider than N are left out
        vw = cpu.kernel_module(c.isa).VECTOR_WIDTH
        assert c.n_tile <= max(vw, -(-n // vw) * vw)
    # the narrowest tile of every ISA is always offered, with the whole-N panel
    for isa in cpu.available_isas():
        mod = cpu.kernel_module(isa)
        narrowest = min(nt for br, bc, nt, _ in mod.VARIANTS if (br, bc) == block)
        assert any(c.isa == isa and c.n_tile == narrowest and c.n_panel == 0 for c in cfgs)


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_kernel_configs_cover_every_compiled_variant_for_large_n(block):
    _, A = random_pruned(20, 20, block, 0.5)
    cfgs = sb.kernel_configs(A, 4096, threads=1)
    offered = {(c.isa, c.n_tile) for c in cfgs}
    for isa in cpu.available_isas():
        for br, bc, nt, _ in cpu.kernel_module(isa).VARIANTS:
            if (br, bc) == block:
                assert (isa, nt) in offered
    assert {c.n_panel for c in cfgs} == set(PANELS)


def test_kernel_configs_restricted_to_isas():
    _, A = random_pruned(20, 20, (4, 1), 0.5)
    cfgs = sb.kernel_configs(A, 64, threads=1, isas=["generic"])
    assert cfgs and {c.isa for c in cfgs} == {"generic"}


def test_kernel_configs_default_threads_is_the_default_thread_count():
    _, A = random_pruned(20, 20, (4, 1), 0.5)
    assert {c.threads for c in sb.kernel_configs(A, 64)} == {cpu.default_threads()}


# -- default_config -----------------------------------------------------------------------------

SHAPES = [(1, 1), (37, 29), (256, 256), (1024, 256), (64, 4096), (3072, 768)]


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_default_config_is_valid(block):
    for M, K in SHAPES:
        _, A = random_pruned(M, K, block, 0.9, seed=M + K)
        for n in (1, 3, 8, 17, 64, 128, 384, 2048):
            cfg = sb.default_config(A, n)
            check_config(cfg, A)                             # raises if invalid
            assert cfg.block == block and cfg.isa == cpu.available_isas()[0]
            assert cfg.n_panel == 0 or cfg.n_panel < n
            # unless it chose a cache panel outside the tuner's PANELS grid, it is one of the
            # configs the tuner would try
            if cfg.n_panel in PANELS:
                assert cfg in sb.kernel_configs(A, n, threads=cfg.threads), (M, K, n, cfg)


def test_default_config_uses_one_thread_for_tiny_work_and_all_for_big():
    _, small = random_pruned(16, 16, (4, 1), 0.5)
    assert sb.default_config(small, 4, threads=8).threads == 1
    _, big = random_pruned(1024, 1024, (4, 1), 0.5)
    assert sb.default_config(big, 256, threads=8).threads == 8


def _forced_isa_params():
    for isa in ("avx512", "avx2", "generic"):
        usable = isa in cpu.compiled_isas() and cpu.isa_supported(isa)
        for b in SUPPORTED_BLOCKS:
            marks = [] if usable else [pytest.mark.skip(reason=f"{isa} not available here")]
            yield pytest.param(isa, b, id=f"{isa}-{block_ids(b)}", marks=marks)


@pytest.mark.parametrize("isa, block", list(_forced_isa_params()))
def test_default_config_when_isa_forced(clean_cpu_caches, isa, block):
    """SPARSEBENCH_ISA forces one ISA: default_config must still give a valid config
    (the situation on a CPU that has only that ISA), and spmm with it must be correct."""
    clean_cpu_caches.setenv(cpu.ENV_ISA, isa)
    W, A = random_pruned(40, 30, block, 0.5)
    X = random_x(30, 20)
    for n in (1, 20, 300):
        cfg = sb.default_config(A, n)
        assert cfg.isa == isa
        check_config(cfg, A)
    assert_spmm_close(sb.spmm(A, X), W, X)
