"""Per-sample adapter maths survives packing, table-driven over the registry: for every registered method, a packed
batch (several samples per row) gives the same loss (task + auxiliary), the same gradient of every trainable tensor,
the same eval-mode logits and, for LoRA-family methods, the same per-sample Fisher of the dominance probe as the
padded batch of the same samples."""

from __future__ import annotations

import pytest
import torch

from pipeline.adapters import ADAPTERS, aux_loss, mark_trainable, start_task
from pipeline.adapters.dominance import DominanceProbe
from pipeline.model.avllm import AVLLM
from pipeline.model.packing import plan_rows
from tests.adapters.test_contract import attached
from tests.model.conftest import mixed_samples

NAMES = list(ADAPTERS)


@pytest.fixture(scope="module")
def base(tiny_model_config):
    torch.manual_seed(0)
    return AVLLM.from_config(tiny_model_config("llama")).eval()


@pytest.fixture(scope="module")
def batches(base):
    """(padded, packed) batches of the same 8 samples, the packed rows holding 2 to 4 samples each, and the sample
    order of the packed batch (its segments)."""
    processor = base.build_processor()
    processor.attention_break_even = None  # row plans by padding alone: several samples in every row
    encoded = [processor.encode(s) for s in mixed_samples() + mixed_samples()[::-1]]
    lengths = [len(e.input_ids) for e in encoded]
    budget = max(lengths) + 2 * min(lengths)
    rows = plan_rows(lengths, budget)
    assert all(len(row) >= 2 for row in rows)
    return processor.collate(encoded), processor.pack(encoded, budget), [i for row in rows for i in row]


def run(model: AVLLM, batch: dict, lora_family: bool) -> tuple[torch.Tensor, dict, dict, torch.Tensor]:
    """(loss incl. auxiliary losses, gradients, probe Fisher, eval-mode logits in sample order) of one batch."""
    model.train()
    model.zero_grad(set_to_none=True)
    with DominanceProbe(model) if lora_family else torch.no_grad() as probe:
        torch.set_grad_enabled(True)
        loss = model(**batch).loss + aux_loss(model)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}  # None: MoRA in the frozen towers
    fisher = {n: (f.text, f.nontext) for n, f in probe.fisher.items()} if lora_family else {}
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    segments = batch.get("segment_ids")
    if segments is None:
        rows = [logits[b][batch["attention_mask"][b].bool()] for b in range(len(logits))]
    else:
        rows = [logits[segments == s] for s in range(int(segments.max()) + 1)]
    return loss.detach(), grads, fisher, rows


@pytest.mark.parametrize("name", NAMES)
def test_packed_batch_trains_exactly_as_the_padded_batch(base, batches, name):
    padded, packed, order = batches
    lora_family = ADAPTERS[name].lora_family
    results = []
    for batch in (padded, packed):
        torch.manual_seed(0)  # A's init
        model = attached(base, name)
        mark_trainable(model)
        start_task(model, 0)
        results.append(run(model, batch, lora_family))
    (loss_a, grads_a, fisher_a, rows_a), (loss_b, grads_b, fisher_b, rows_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and any(g is not None for g in grads_a.values())
    for key in grads_a:
        if grads_a[key] is None:
            assert grads_b[key] is None, key
        else:
            # 1e-5 of the gradient's scale: IMoD's injected constraint gradients reach ~1e3 on this tiny model, where
            # fp32 summation order alone moves elements by ~1e-4
            scale = max(1.0, float(grads_a[key].abs().max()))
            torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-5 * scale, rtol=1e-5, msg=key)
    assert fisher_a.keys() == fisher_b.keys()
    for key in fisher_a:
        torch.testing.assert_close(fisher_b[key], fisher_a[key], atol=1e-7, rtol=1e-4, msg=key)
    # eval mode (DeLo routes each sample to its nearest task key): segments in the packed rows' order
    lengths = [len(r) for r in rows_a]
    assert [len(rows_b[s]) for s in range(len(order))] == [lengths[i] for i in order]
    for s, i in enumerate(order):
        torch.testing.assert_close(rows_b[s], rows_a[i], atol=1e-5, rtol=0)
