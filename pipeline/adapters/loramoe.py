"""LoRAMoE (Dou et al. 2024): N LoRA experts mixed per token by a softmax router, with an optional balance loss.

h = W0 x + s · Σ_e g_e(x) B_e A_e dropout(x),  g(x) = softmax(W_g x)  (W_g: N x d_in, no bias, on the undropped x).
Parameters per layer: N r (d_in + d_out) + N d_in.

Load balancing: with load_e = Σ_tokens g_e(x) over the non-PAD tokens of the forward, the layer's auxiliary loss is
  balance_coef · CV²(load) = balance_coef · Var(load) / mean(load)²   (population variance),
which is 0 for a uniform load. The model's loss does not include it: a training loop adds
`pipeline.adapters.aux_loss(model)` (the sum
over layers of the loss stored by each layer's last forward) to the task loss after each forward, before backward.
The value is that of the last forward, so it must be read per micro-batch; recomputation (gradient checkpointing)
re-runs forward during backward and only overwrites the stored value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import MultiLowRankLinear, init_down_, router_weights
from pipeline.modality import Modality, ModalityContext


def balance_loss(g: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CV² of the per-expert load Σ_tokens keep · g over the leading dims of g [..., N] (keep [...] in {0, 1})."""
    load = (g * keep.unsqueeze(-1)).reshape(-1, g.shape[-1]).sum(0)
    return load.var(correction=0) / load.mean().square().clamp(min=torch.finfo(load.dtype).tiny)


@dataclass
class LoRAMoEOptions:
    experts: int = 4
    balance_coef: float = 0.0  # balance_coef · CV²(router load): see the module docstring

    def validate(self) -> None:
        if self.experts < 1:
            raise ValueError(f"adapter.options.experts: must be an integer >= 1, got {self.experts}")
        if self.balance_coef < 0:
            raise ValueError(f"adapter.options.balance_coef: must be >= 0, got {self.balance_coef}")


class LoRAMoELinear(MultiLowRankLinear, name="loramoe"):
    """A_e = lora_A[e], B_e = lora_B[:, e], router W_g = `router` [N, d_in] (nn.Linear's init); `last_aux_loss`
    holds balance_coef · CV² of the last forward (None when balance_coef is 0)."""

    Options = LoRAMoEOptions

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        opts = cfg.method_options()
        experts = opts.experts
        super().__init__(base, cfg, ctx, depth, name, n_down=experts, n_up=experts)
        self.router = init_down_(self._new_param(experts, self.in_features))
        self.balance_coef = float(opts.balance_coef)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.project_down(x)  # [..., N, r]
        g = router_weights(self.router, x)  # [..., N]
        if self.balance_coef:
            keep = (self.ctx.ids_for(x) != int(Modality.PAD)).to(g.dtype)
            self.last_aux_loss = self.balance_coef * balance_loss(g, keep)
        return self.project_up(x, g.unsqueeze(-1) * u)
