"""HydraLoRA (Tian et al. 2024): one shared A, N B heads mixed per token by a softmax router.

h = W0 x + s · Σ_h g_h(x) B_h A dropout(x),  g(x) = softmax(W_g x)  (W_g: N x d_in, no bias, on the undropped x).
A shared A learns what all tokens have in common; the heads specialise without a task or modality label.
Parameters per layer: r d_in + N r d_out + N d_in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import MultiLowRankLinear, init_down_, router_weights
from pipeline.modality import ModalityContext


@dataclass
class HydraLoRAOptions:
    heads: int = 4  # number of B heads

    def validate(self) -> None:
        if self.heads < 1:
            raise ValueError(f"adapter.options.heads: must be an integer >= 1, got {self.heads}")


class HydraLoRALinear(MultiLowRankLinear, name="hydralora"):
    """A = lora_A[0], B_h = lora_B[:, h], router W_g = `router` [N, d_in] (nn.Linear's init)."""

    Options = HydraLoRAOptions

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        heads = cfg.method_options().heads
        super().__init__(base, cfg, ctx, depth, name, n_down=1, n_up=heads)
        self.router = init_down_(self._new_param(heads, self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.project_down(x)  # [..., 1, r]
        g = router_weights(self.router, x)  # [..., N]
        return self.project_up(x, g.unsqueeze(-1) * u)
