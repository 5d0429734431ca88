"""DoRA (Liu et al. 2024): LoRA's direction update with a learned per-row magnitude.

W' = m · V / ||V||_row with V = W0 + s·B A; the row norm is detached in backprop (DoRA section 4.3), as PEFT does,
so the formulas and the outputs agree with PEFT's `use_dora=True` layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import LowRankLinear
from pipeline.modality import ModalityContext


class DoRALinear(LowRankLinear, name="dora"):
    peft_options: ClassVar[dict[str, Any] | None] = {"use_dora": True}

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        self.magnitude = self._new_param(self.out_features)
        with torch.no_grad():
            self.magnitude.copy_(torch.linalg.norm(base.weight, dim=1))

    def _direction(self) -> torch.Tensor:
        return self.base_layer.weight + self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base_layer.weight
        bias = self.base_layer.bias
        norm = torch.linalg.norm(self._direction().detach(), dim=1)
        gain = self.magnitude / norm
        x_in = self.dropout(x)
        lora = F.linear(self.project_down(x, x_in), self.lora_B) * self.scaling
        if isinstance(self.dropout, nn.Identity) or not self.training:  # x_in == x
            out = gain * (F.linear(x, weight) + lora)
            return out if bias is None else out + bias
        # With dropout the rescaled direction sees dropout(x) while the base output keeps x (PEFT's formula).
        return self.base_layer(x) + (gain - 1) * F.linear(x_in, weight) + gain * lora

    def merged_weight(self) -> torch.Tensor:
        direction = self._direction()
        return (self.magnitude / torch.linalg.norm(direction, dim=1)).unsqueeze(1) * direction

    def delta_weight(self) -> torch.Tensor:
        return self.merged_weight() - self.base_layer.weight

    def peft_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().peft_tensors(), "lora_magnitude_vector": self.magnitude}
