"""The torch reference forward pass against transformers (and llama.cpp where transformers
ignores a feature) on the same GGUF files."""
from pathlib import Path

import numpy as np
import pytest
import torch

from larosa.converter.model import forward, topk_keep
from larosa.converter.source import SourceModel
from larosa.converter.weights import source_weights
from larosa.tools.make_synthetic import make_synthetic


def hf_logits(path: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM
    p = Path(path)
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    with torch.no_grad():
        return hf(tokens).logits


@pytest.mark.parametrize("name", ["untied_f32", "tied_gqa_q8", "odd_f16", "gqa_q4_1"])
def test_reference_matches_transformers_tiny(tiny, name):
    w = source_weights(SourceModel(tiny[name]))
    tokens = torch.randint(0, w.hp.n_vocab, (2, 33), generator=torch.Generator().manual_seed(1))
    ours, ref = forward(w, tokens), hf_logits(tiny[name], tokens)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_reference_matches_transformers_smollm2(smollm2):
    w = source_weights(SourceModel(smollm2))
    tokens = torch.randint(0, w.hp.n_vocab, (1, 48), generator=torch.Generator().manual_seed(2))
    ours, ref = forward(w, tokens), hf_logits(smollm2, tokens)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=5e-4)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


def test_rope_freqs_match_llama_cpp(tmp_path):
    """transformers ignores rope_freqs.weight (llama3-style factors); llama.cpp applies it."""
    from llama_cpp import Llama
    path = make_synthetic(str(tmp_path / "rf.gguf"), 64, 96, 2, 4, 2, 320, "f32", rope_freqs=True, seed=3)
    w = source_weights(SourceModel(path))
    assert w.rope_freqs is not None
    tokens = [1] + list(np.random.default_rng(0).integers(3, 320, 30))
    llm = Llama(path, n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)  # f32 KV
    llm.eval(tokens)
    ref = torch.tensor(np.array(llm.scores[: len(tokens)]))
    ours = forward(w, torch.tensor([tokens]))[0]
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-3)
    w.rope_freqs = None   # and the factors do matter
    assert (forward(w, torch.tensor([tokens]))[0] - ref).abs().max() > 1e-2


def test_topk_keep_exact_and_ties():
    x = torch.tensor([[0.5, -2.0, 1.0, -1.0, 0.25, 1.0]])
    assert topk_keep(x, 3).tolist() == [[0.0, -2.0, 1.0, -1.0, 0.0, 0.0]]  # ties: lower index first
    assert topk_keep(x, 6).equal(x)
    y = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    kept = topk_keep(y, 37)
    assert ((kept != 0).sum(-1) == 37).all()
    thresh = kept.abs().masked_fill(kept == 0, float("inf")).min(-1).values
    dropped = y.abs().masked_fill(kept != 0, -1).max(-1).values
    assert (thresh >= dropped).all()
