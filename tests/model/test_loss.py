"""The loss of `pipeline.model.loss`: per-sample targets, and the chunked LM-head loss over label positions only
against the plain full-logits loss (value and gradients, padded and packed, untied and tied head, soft-capping)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipeline.model.loss import chunked_lm_loss, packed_positions, shift_targets
from tests.model.conftest import mixed_samples


def test_targets_stop_at_sample_boundaries_and_positions_restart():
    labels = torch.tensor([[-100, 5, 6, -100, 7, 8, 0]])
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    assert shift_targets(labels, segments).tolist() == [[5, 6, -100, 7, 8, -100, -100]]
    assert packed_positions(segments).tolist() == [[0, 1, 2, 0, 1, 2, 0]]


def grads_of(model, batch, chunk: int) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, loss_chunk_tokens=chunk, num_items_in_batch=7.0).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_loss_equals_the_plain_loss(model, packed, tied):
    """Llama, Qwen2, Qwen3 (the `model` fixture): loss and the gradients of projectors, embeddings and head."""
    processor = model.build_processor()
    encoded = [processor.encode(s) for s in mixed_samples()]
    batch = processor.pack(encoded, 10_000) if packed else processor.collate(encoded)
    head, embed = model.llm.get_output_embeddings(), model.llm.get_input_embeddings()
    untied = head.weight
    if tied:
        head.weight = embed.weight
    try:
        for p in (head.weight, embed.weight):
            p.requires_grad_(True)
        plain, plain_grads = grads_of(model, batch, 0)
        chunked, chunked_grads = grads_of(model, batch, 5)  # several chunks and a ragged last one
    finally:
        head.weight = untied
        model.requires_grad_(False)
        model.projectors.requires_grad_(True)
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_chunked_loss_applies_the_familys_soft_capping():
    torch.manual_seed(0)
    head = nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 6))
    targets[0, :2] = -100
    config = SimpleNamespace(final_logit_softcapping=3.0, logit_scale=0.5)
    logits = torch.tanh(head(hidden) * 0.5 / 3.0) * 3.0
    expected = nn.functional.cross_entropy(logits.view(-1, 50), targets.view(-1))
    torch.testing.assert_close(chunked_lm_loss(hidden, head, targets, config, 4), expected)
