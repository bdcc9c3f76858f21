"""The sparsity methods (larosa, topk, teal, cats; automatic basis; WINA scores; rotated thresholds): what the converter
stores for each, and the C runtime against the reference simulation for each."""
import numpy as np
import pytest
import torch

from larosa.converter.model import forward
from larosa.converter.source import SourceModel
from larosa.converter.weights import larosa_weights, source_weights, topk_of
from larosa.runtime import format as F
from larosa.runtime.loader import load
from larosa.runtime.model import Model

from conftest import convert_for_test
from test_runtime import check_against_reference

VARIANTS = {
    "budget": dict(method="budget"),                    # WINA-scored thresholds, per-token budget
    "larosa": dict(method="larosa"),
    "topk": dict(method="topk"),
    "teal": dict(method="teal"),
    "cats": dict(method="cats"),
    "auto_wina": dict(method="larosa", rotation="auto", score="wina"),
    "teal_pca": dict(method="teal", rotation="pca"),     # rotated thresholds
}


@pytest.fixture(scope="module")
def variants(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("methods")
    return {n: convert_for_test(tiny["tied_gqa_q8"], str(d / f"{n}.gguf"), "f32", **kw) for n, kw in VARIANTS.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_dense_equals_original(variants, tiny, name):
    w0 = source_weights(SourceModel(tiny["tied_gqa_q8"]))
    f = load(variants[name])
    toks = torch.randint(0, w0.hp.n_vocab, (1, 25), generator=torch.Generator().manual_seed(4))
    w = larosa_weights(f, quantized_activations=False)   # the fusion's math (the Q8_0 tied head's 8-bit input is another test's)
    a, b = forward(w0, toks), forward(w, toks, topk_of(f, 0.0))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@pytest.mark.parametrize("name", list(VARIANTS) + ["teal_budget"])
@pytest.mark.parametrize("batched", [True, False], ids=["prefill", "decode"])
def test_runtime_matches_reference(variants, name, batched):
    m = Model(variants[name.removesuffix("_budget")], sparsity=0.4, n_threads=2, budget=name.endswith("_budget"))
    tokens = np.random.default_rng(8).integers(0, m.hp.n_vocab, 37).tolist()
    check_against_reference(m, tokens, rtol=1e-4, batched=batched)


def test_what_each_method_stores(variants):
    hp = load(variants["larosa"]).hp
    larosa, topk, teal, cats = (load(variants[n]) for n in ("larosa", "topk", "teal", "cats"))
    assert larosa.rotated == [True] * hp.n_layers and larosa.coefs["mlp_out"][0] == pytest.approx(1.2)
    assert F.T_ADAPTER(1) in larosa.tensors and not larosa.thr_table
    for f in (topk, teal, cats):            # no rotation: no adapter anywhere
        assert f.rotated == [False] * hp.n_layers
        assert not [n for n in f.tensors if "adapter" in n]
    assert F.T_SCORE(0, "attn_in") in topk.tensors and F.T_SCORE(0, "attn_out") not in topk.tensors
    assert set(teal.thr_table) == set(F.BLOCK_INPUTS) and teal.thr_grid[0] == pytest.approx(0.05)
    assert set(cats.thr_table) == {"mlp_out"} and cats.mlp_out_key == "gate"
    assert cats.ks(0.5)["attn_in"] == [hp.dim] * hp.n_layers       # attention stays dense
    sel = teal.selection(0.4)
    assert all(t > 0 for b in F.BLOCK_INPUTS for t in sel.threshold[b])
    assert sel.threshold["mlp_out"][0] > teal.selection(0.2).threshold["mlp_out"][0]
    wina = load(variants["auto_wina"])
    assert all(F.T_SCORE(l, b) in wina.tensors for l in range(hp.n_layers) for b in F.BLOCK_INPUTS)
    assert len(wina.rotated) == hp.n_layers
    budget = load(variants["budget"])                    # thresholds on WINA keys, 0.8/1.2, budget on
    assert budget.budget_default and not teal.budget_default and set(budget.thr_table) == set(F.BLOCK_INPUTS)
    assert all(F.T_SCORE(l, b) in budget.tensors for l in range(hp.n_layers) for b in F.BLOCK_INPUTS)
    assert budget.coefs["attn_out"][0] == pytest.approx(1.2) and budget.rotated == [False] * hp.n_layers
    assert Model(variants["budget"], n_threads=1).budget and not Model(variants["budget"], n_threads=1, budget=False).budget
    teal_pca = load(variants["teal_pca"])                # thresholds on |z|, z = u Q: no score tensor
    assert teal_pca.rotated == [True] * hp.n_layers and set(teal_pca.thr_table) == set(F.BLOCK_INPUTS)
    assert not [n for n in teal_pca.tensors if ".score_" in n]


def test_thresholds_hit_their_level_on_calibration_like_data(variants):
    """TEAL's tables come from the calibration tokens' distribution: on random tokens of the same
    kind the measured skipped fraction of block weight bytes lands near the target."""
    m = Model(variants["teal"], sparsity=0.5, n_threads=1)
    m.eval(np.random.default_rng(0).integers(0, m.hp.n_vocab, 48).tolist())
    assert 0.35 < m.skipped_fraction() < 0.65
    m.set_sparsity(0.0)
    m.eval([1, 2, 3])
    assert m.skipped_fraction() < 0.01


def test_budget_mode_needs_thresholds_and_valid_plans(variants):
    for name in ("larosa", "topk", "cats"):             # no threshold tables for every block input
        with pytest.raises(ValueError, match="budget mode scales thresholds"):
            Model(variants[name], n_threads=1, budget=True)
    from larosa._kernels import ffi, lib
    m = Model(variants["teal"], sparsity=0.4, n_threads=1, budget=True)
    plan, cost = m.file.budget(0.4)
    flat = lambda d: [v for b in F.BLOCK_INPUTS for v in d[b]]
    good_plan, good_cost = flat(plan), flat(cost)
    assert all(1 <= p <= m.hp.dim * 4 for p in good_plan) and all(c > 0 for c in good_cost)
    for bad_plan, bad_cost in [([0.5] + good_plan[1:], good_cost), ([1e9] + good_plan[1:], good_cost),
                               ([float("nan")] + good_plan[1:], good_cost), (good_plan, [0.0] + good_cost[1:]),
                               (good_plan, [float("inf")] + good_cost[1:])]:
        assert lib.lr_model_set_budget(m._m, ffi.new("float[]", bad_plan), ffi.new("float[]", bad_cost)) == lib.LR_ERANGE
    assert lib.lr_model_set_budget(m._m, ffi.new("float[]", good_plan), ffi.NULL) == lib.LR_EARG
    assert lib.lr_model_set_budget(ffi.NULL, ffi.NULL, ffi.NULL) == lib.LR_EARG
    m.set_sparsity(0.3)                                  # a new sparsity brings its own plan
    tokens = np.random.default_rng(5).integers(0, m.hp.n_vocab, 20).tolist()
    m.eval(tokens)
    plan, cost = m.file.budget(0.3)
    dense = sum(m.hp.block_input_width(b) * c for b in F.BLOCK_INPUTS for c in cost[b])
    planned = sum(p * c for b in F.BLOCK_INPUTS for p, c in zip(plan[b], cost[b]))
    assert m.skipped_fraction() == pytest.approx(1 - planned / dense, abs=0.005)   # each token on its plan
    m.set_sparsity(0.0)                                  # thresholds of 0: everything non-zero is read
    m.reset()
    m.eval(tokens)
    assert m.skipped_fraction() < 0.01
