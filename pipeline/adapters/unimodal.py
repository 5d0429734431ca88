"""Uni-modal LoRA: one LoRA per modality, each applied only to its own modality's tokens.

h = W0 x + s · Σ_m [id(x) = m] · B_m A_m dropout(x),  m ∈ {text, visual, audio};  PAD tokens get W0 x only.
One of the IMoD paper's baselines: fully separate modality paths, nothing shared between modalities.
Parameters per layer: 3 r (d_in + d_out).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import MultiLowRankLinear
from pipeline.modality import MODALITIES, ModalityContext, modality_onehot


class UniModalLoRALinear(MultiLowRankLinear, name="unimodal_lora"):
    """A_m = lora_A[m], B_m = lora_B[:, m]; every token computes all three u_m and keeps its own (no gather/scatter,
    which would need data-dependent shapes)."""

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name, n_down=MODALITIES, n_up=MODALITIES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.project_down(x)
        keep = modality_onehot(self.ctx.ids_for(x), u.dtype)
        return self.project_up(x, u * keep.unsqueeze(-1))
