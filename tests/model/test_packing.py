"""Packed batches: several samples in one row attend within their sample only, with positions restarting per sample;
the loss sees the same targets as the padded batch; the chunked loss equals the plain one."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from pipeline.model.packing import (
    PADDING_BOUND,
    attention_break_even,
    first_fit_decreasing,
    plan_rows,
    shortest_rows,
)
from tests.model.conftest import mixed_samples


def test_first_fit_decreasing_packs_longest_first_into_the_first_row_with_room():
    rows = first_fit_decreasing([5, 9, 3, 4, 2], 10)
    assert rows == [[1], [0, 3], [2, 4]]
    assert first_fit_decreasing([12, 3], 10) == [[0], [1]]  # an item over capacity gets a row of its own


def test_shortest_rows_finds_the_smallest_capacity_that_needs_no_more_rows():
    assert first_fit_decreasing([5, 4, 3, 3, 1], 10) == [[0, 1, 4], [2, 3]]  # rows of 10 and 6
    assert shortest_rows([5, 4, 3, 3, 1], 2, 10) == [[0, 2], [1, 3, 4]]  # rows of 8 and 8
    assert shortest_rows([5, 4, 3, 3, 1], 3, 10) == [[0, 4], [1], [2, 3]]  # 6, 4, 6: no three rows are shorter
    assert shortest_rows([12, 3], 2, 10) == [[0], [1]]  # an item over max_tokens: a row of its own


def test_plan_rows_trades_row_length_for_rows_by_estimated_flops():
    lengths = [500, 480, 300, 260, 220, 200]  # 1960 tokens
    # attention independent of the rows: the least padded plan, fewest rows on ties (one row of 1960, no padding)
    assert plan_rows(lengths, 2048) == [[0, 1, 2, 3, 4, 5]]
    # sdpa on a small model (a row's attention costs as much as its linear layers at 500 tokens): shorter rows
    rows = plan_rows(lengths, 2048, break_even=500)
    assert rows == [[0], [1], [2, 5], [3, 4]]  # 4 rows of <= 500 (2% padding): estimated 4000, 2 rows 5802, 1 row 9643
    # cheaper plans that pad more than PADDING_BOUND are not taken: 2 rows of <= 1000 would pad 10%
    assert plan_rows([1000, 500, 300], 2048, break_even=100) == [[0, 1, 2]]
    # no plan within the bound: the least padded (2 rows, 14%), not the cheaper 3 rows of 1000 (20%)
    assert plan_rows([1000, 700, 700], 1500, break_even=100) == [[0], [1, 2]]
    assert PADDING_BOUND == 0.05


def test_attention_break_even_from_the_llm_config():
    config = LlamaConfig(
        hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2, vocab_size=64
    )
    config._attn_implementation = "sdpa"
    # per token: 2 x (2 x 256 x (4 + 2) x 64 + 3 x 256 x 688) FLOPs; per pair: 4 x 4 x 64
    assert attention_break_even(config) == 1416.0
    config._attn_implementation = "flash_attention_2"  # varlen: attention cost does not depend on the rows
    assert attention_break_even(config) is None


def test_processor_packs_with_the_break_even_of_its_llm(model):
    assert model.build_processor().attention_break_even == attention_break_even(model.llm.config)


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
    rows = plan_rows(lengths, budget, processor.attention_break_even)
    segments = batch["segment_ids"]
    assert max(map(len, rows)) >= 2 and bool((segments == -1).any())
    order = [i for row in rows for i in row]
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
    processor.attention_break_even = None  # row plans by padding alone: all samples in one unpadded row
    encoded = [processor.encode(s) for s in mixed_samples()]
    padded, packed = processor.collate(encoded), processor.pack(encoded, 10_000)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(model(**packed).loss, model(**padded).loss, atol=1e-5, rtol=0)
