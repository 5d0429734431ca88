"""Packed batches: several samples in one row attend within their sample only, with positions restarting per sample;
the loss sees the same targets as the padded batch; the chunked loss equals the plain one."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.processor import first_fit_decreasing, pack_rows
from tests.model.conftest import mixed_samples


def test_first_fit_decreasing_packs_longest_first_into_the_first_row_with_room():
    rows = first_fit_decreasing([5, 9, 3, 4, 2], 10)
    assert rows == [[1], [0, 3], [2, 4]]
    assert first_fit_decreasing([12, 3], 10) == [[0], [1]]  # an item over capacity gets a row of its own


def test_pack_rows_balances_the_rows_first_fit_decreasing_needs():
    assert first_fit_decreasing([5, 4, 3, 3, 1], 10) == [[0, 1, 4], [2, 3]]  # rows of 10 and 6
    assert pack_rows([5, 4, 3, 3, 1], 10) == [[0, 3], [1, 2, 4]]  # rows of 8 and 8
    assert pack_rows([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]  # balancing would overflow: first-fit's rows
    assert pack_rows([12, 3], 10) == [[0], [1]]


def per_sample_logits(model, processor, encoded) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**processor.collate([e])).logits[0] for e in encoded]


def test_packed_forward_equals_per_sample_forwards(model):
    """Llama, Qwen2, Qwen3 (the `model` fixture): logits of every sample inside packed rows to 1e-5 (fp32)."""
    processor = model.build_processor()
    encoded = [processor.encode(s) for s in mixed_samples()]
    lengths = [len(e.input_ids) for e in encoded]
    budget = max(lengths) + min(lengths)  # at least one row holds two samples, another is padded at its end
    batch = processor.pack(encoded, budget)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] < len(encoded)
    with torch.no_grad():
        packed = model(**batch).logits
    expected = per_sample_logits(model, processor, encoded)
    order = [i for row in pack_rows(lengths, budget) for i in row]
    segments = batch["segment_ids"]
    for segment, i in enumerate(order):
        got = packed[segments == segment]
        torch.testing.assert_close(got, expected[i], atol=1e-5, rtol=0)


def test_packed_batch_refuses_calls_that_would_leak(model):
    processor = model.build_processor()
    batch = processor.pack([processor.encode(s) for s in mixed_samples()], 10_000)
    mask = torch.ones_like(batch["input_ids"])
    for bad, match in (
        ({"attention_mask": mask}, "attention_mask"),
        ({"use_cache": True}, "use_cache"),
        ({"position_ids": mask}, "position_ids"),
    ):
        with pytest.raises(ValueError, match=match):
            model(**batch, **bad)


def test_padded_and_packed_losses_are_equal(model):
    processor = model.build_processor()
    encoded = [processor.encode(s) for s in mixed_samples()]
    padded, packed = processor.collate(encoded), processor.pack(encoded, 10_000)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**padded).loss, atol=1e-5, rtol=0)
