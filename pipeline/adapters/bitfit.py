"""BitFit (Ben Zaken et al. 2022): train the biases only.

The wrapped layer gets its own bias parameter, a copy of the base bias (zeros where the layer has none), so the
frozen base stays untouched and merging yields an `nn.Linear` with a bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import AdapterLinear
from pipeline.adapters.config import AdapterConfig
from pipeline.modality import ModalityContext


class BitFitLinear(AdapterLinear, name="bitfit"):
    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        self.bias = self._new_param(self.out_features)
        if base.bias is not None:
            with torch.no_grad():
                self.bias.copy_(base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base_layer.weight, self.bias)

    def delta_weight(self) -> torch.Tensor:
        return torch.zeros_like(self.base_layer.weight)

    def merged_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def merged_bias(self) -> torch.Tensor:
        return self.bias
