"""The language-model loss of a (padded or packed) batch: which position predicts which label, and the LM head plus
cross-entropy over the label positions only, in chunks.

Targets. Position t of a sample predicts the label of position t+1 of the same sample; the last position of each
sample predicts nothing (-100), so that in a packed row no position learns the next sample's first token.

Normalisation. `num_items` is the denominator of the summed token losses (HF's `num_items_in_batch`): None gives the
mean over this batch's targets; the training loop passes the window's global target count so that the loss is
independent of how the tokens are split into micro-batches and ranks (`pipeline.train.loop`).

Chunked loss. The plain computation materialises [tokens x vocab] fp32 logits (plus their gradient) for every
position; at a 152k vocabulary and 4k tokens that is 2.5 GB each. Here the head runs over the label positions only,
`chunk` positions at a time, each chunk's logits recomputed in backward (activation checkpointing) so that at most
one chunk's logits exist at once. The head is the model's own output embedding module (tied or not, ZeRO-3
partitioned or not); a family's final logit soft-capping (`final_logit_softcapping`) or `logit_scale` is applied as
its causal-LM head does (Llama, Qwen2 and Qwen3 have neither).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def row_segments(attention_mask: torch.Tensor) -> torch.Tensor:
    """Segments of a padded batch (one sample per row): the row index, -1 at padding."""
    rows = torch.arange(attention_mask.shape[0], device=attention_mask.device).unsqueeze(-1)
    return torch.where(attention_mask.bool(), rows, -1)


def packed_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at 0 at the start of every run of equal segment ids (padding included)."""
    index = torch.arange(segments.shape[-1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - torch.cummax(torch.where(starts, index, 0), dim=-1).values


def shift_targets(labels: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Per position, the label it is trained to predict (-100: none); see the module docstring."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] >= 0)
    targets[:, :-1] = torch.where(same, labels[:, 1:], IGNORE_INDEX)
    return targets


def count_targets(batch: dict) -> int:
    """The number of label tokens the loss of `batch` (a collated or packed batch) sums over."""
    segments = batch.get("segment_ids")
    if segments is None:
        segments = row_segments(batch["attention_mask"])
    return int((shift_targets(batch["labels"], segments) != IGNORE_INDEX).sum())


def head_logits(head: nn.Module, hidden: torch.Tensor, config) -> torch.Tensor:
    """fp32 logits of the LM head with the family's final scaling / soft-capping."""
    logits = head(hidden)
    scale = getattr(config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def _chunk_loss(head: nn.Module, config, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head_logits(head, hidden, config), targets, reduction="sum")


def chunked_lm_loss(
    hidden: torch.Tensor,
    head: nn.Module,
    targets: torch.Tensor,
    config,
    chunk: int,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ cross-entropy over the positions with a target, / num_items (default: their count); see the docstring."""
    keep = (targets != IGNORE_INDEX).reshape(-1).nonzero().squeeze(-1)
    picked = hidden.reshape(-1, hidden.shape[-1])[keep]
    wanted = targets.reshape(-1)[keep]
    total = hidden.new_zeros((), dtype=torch.float32) + 0 * hidden.sum()  # keeps the graph when nothing is kept
    for start in range(0, len(keep), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_chunk_loss, head, config, picked[part], wanted[part], use_reentrant=False)
    return total / (max(len(keep), 1) if num_items is None else num_items)
