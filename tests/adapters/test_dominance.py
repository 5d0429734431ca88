"""Non-Text Dominance Rate on a case with a known answer, and on every LoRA-family adapter."""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import VOCAB, modality_ids, randomize_adapters, tiny_llama
from torch import nn

from pipeline.adapters import AdapterConfig, attach
from pipeline.adapters.dominance import DominanceProbe
from pipeline.modality import Modality, ModalityContext


@pytest.mark.parametrize("name", ["lora", "dora", "imod"])
def test_known_answer(name):
    """Text tokens live in input dims 0..5, non-text tokens in dims 6..7 and PAD tokens everywhere: the text
    gradient of A is zero on columns 6..7 and the non-text one zero on 0..5, so exactly 2 of 8 columns are
    non-text-dominated (R = 0.25) — PAD must not count for either side."""
    torch.manual_seed(0)
    ctx = ModalityContext()
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(8, 3))
    attach(model, AdapterConfig(name=name, rank=2, targets=["q_proj"]), ctx)
    randomize_adapters(model)
    ids = torch.tensor([[0, 0, 1, 2, 0, -1], [1, 0, 2, 0, -1, -1]])
    x = torch.randn(2, 6, 8)
    x[..., 6:] *= (ids != Modality.TEXT).unsqueeze(-1)
    x[..., :6] *= ((ids == Modality.TEXT) | (ids == Modality.PAD)).unsqueeze(-1)
    x[ids == Modality.PAD] *= 100
    ctx.set(ids)
    with DominanceProbe(model) as probe:
        (model(x) * torch.randn(2, 6, 3)).sum().backward()
    result = probe.result()
    assert result.rate == pytest.approx(0.25)
    assert result.per_layer == {"q_proj": pytest.approx(0.25)}
    assert model.q_proj.probe is None


def test_text_only_batch_has_rate_zero_and_probe_leaves_gradients_alone():
    model = tiny_llama()
    ctx = ModalityContext()
    attach(model, AdapterConfig(name="lora", rank=4), ctx)
    randomize_adapters(model)
    tokens = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    ctx.set(modality_ids(3, 16))
    with DominanceProbe(model) as probe:
        model(input_ids=tokens, labels=tokens).loss.backward()
    assert 0.0 < probe.result().rate < 1.0 and len(probe.result().per_layer) == 14
    probed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(input_ids=tokens, labels=tokens).loss.backward()
    assert all(torch.equal(probed[n], p.grad) for n, p in model.named_parameters() if p.grad is not None)

    ctx.set(torch.full((3, 16), int(Modality.TEXT)))
    with DominanceProbe(model) as probe:
        model(input_ids=tokens, labels=tokens).loss.backward()
    assert probe.result().rate == 0.0


def test_bitfit_has_no_rate():
    model = tiny_llama()
    attach(model, AdapterConfig(name="bitfit"))
    with pytest.raises(ValueError, match="no LoRA-family"):
        DominanceProbe(model)
