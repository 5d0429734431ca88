"""MokA (Wei et al. 2025): modality-specific A matrices, one shared B, question-guided cross-attention in rank space.

Per token of modality m ∈ {text, visual, audio}: a_m = A_m dropout(x) (r-dim). Non-text activations attend to the
text activations of the question span of the same sample (the modality map's question flags; in a packed row,
the sample's own segment):
  a_m' = a_m + w · softmax(a_m qᵀ / sqrt(r)) q,   q = [a_t of the question tokens of that sample]  (m ≠ text),
  h = W0 x + s · B (a_t + a_v' + a_a'),   i.e. per token h = W0 x + s · B a'  for its own modality's a'.
PAD tokens get W0 x only. A sample with no question tokens gets no enhancement (its masked softmax is empty); text
tokens never attend, so KV-cache decoding (new tokens are text) equals recomputing the whole sequence.
The softmax is a masked [T, T] attention per sample, batched (no loop over samples). w = `cross_weight` (MokA's
audio-visual default 1). Parameters per layer: 3 r d_in + r d_out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import MultiLowRankLinear
from pipeline.modality import MODALITIES, Modality, ModalityContext, modality_onehot


def question_attention(a: torch.Tensor, text: torch.Tensor, ids: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """softmax(a qᵀ/sqrt(r)) q per sample for the non-text tokens of a [B, T, r] (0 elsewhere), q the rows of `text`
    [B, T, r] at the sample's text question tokens. A sample without question tokens gets 0 (masking by multiplying
    the probabilities, not by -inf, so that it has no NaN in forward or backward)."""
    keys = (question & (ids == int(Modality.TEXT))).unsqueeze(1)  # [B, 1, T]
    scores = torch.bmm(a, text.transpose(1, 2)) / math.sqrt(a.shape[-1])
    probs = torch.softmax(scores.masked_fill(~keys, torch.finfo(scores.dtype).min), dim=-1) * keys
    nontext = ((ids == int(Modality.VISUAL)) | (ids == int(Modality.AUDIO))).unsqueeze(-1)
    return torch.bmm(probs, text) * nontext


@dataclass
class MokAOptions:
    cross_weight: float = 1.0  # w in a_m' = a_m + w · softmax(a_m qᵀ/√r) q


class MokALinear(MultiLowRankLinear, name="moka"):
    """A_m = lora_A[m] (m = 0 text, 1 visual, 2 audio), B = lora_B[:, 0]."""

    Options = MokAOptions

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name, n_down=MODALITIES, n_up=1)
        self.cross_weight = float(cfg.method_options().cross_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_all = self.project_down(x)  # [..., 3, r]
        ids = self.ctx.ids_for(x)
        a = (a_all * modality_onehot(ids, a_all.dtype).unsqueeze(-1)).sum(-2)  # each token's own a_m; PAD: 0
        if self.cross_weight:
            shape = (-1, ids.shape[-1], self.rank)  # [N, d] inputs (encoder towers) are one sample
            layout = self.ctx.layout_for(
                x.reshape(-1, ids.shape[-1], x.shape[-1])
            )  # packed rows: attention within each sample
            cross = question_attention(
                layout.to_samples(a.reshape(shape)),
                layout.to_samples(a_all[..., 0, :].reshape(shape)),
                layout.to_samples(ids.reshape(shape[:2]), int(Modality.PAD)),
                layout.to_samples(self.ctx.question_for(x).reshape(shape[:2]), False),
            )
            a = a + self.cross_weight * layout.to_tokens(cross).view_as(a)
        return self.project_up(x, a.unsqueeze(-2))
