"""The LoRA machinery the LoRA-family methods share: the single-path core (LoRA, DoRA, IMoD, MoRA) and the multi-path
core of the token-dependent variants (uni-modal LoRA, MokA, LoRAMoE, HydraLoRA)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import AdapterLinear
from pipeline.modality import ModalityContext

if TYPE_CHECKING:
    from pipeline.adapters.config import AdapterConfig
    from pipeline.adapters.dominance import DominanceProbe


def lora_hyper(cfg: AdapterConfig) -> tuple[int, float, nn.Module]:
    """(rank, scaling s = alpha/r or rsLoRA's alpha/sqrt(r), dropout on the adapter's input): one definition for every
    LoRA-family method, single or multi-path."""
    scaling = cfg.alpha / (math.sqrt(cfg.rank) if cfg.rslora else cfg.rank)
    return cfg.rank, scaling, nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()


@torch.no_grad()
def init_down_(a: torch.Tensor) -> torch.Tensor:
    """PEFT's init of a down projection (kaiming-uniform, a=sqrt(5), i.e. U(±1/sqrt(d))) on the last two dims, so a
    stack [..., r, d] of A matrices (or routers) is initialised as that many separate `nn.Linear(d, r)` weights."""
    nn.init.kaiming_uniform_(a.view(-1, a.shape[-1]), a=math.sqrt(5))
    return a


class LowRankLinear(AdapterLinear):
    """The LoRA core: h = W0 x + s · B A dropout(x), s = alpha/r (rsLoRA: alpha/sqrt(r)).

    A is kaiming-uniform and B zero, as in PEFT. Subclasses change how u = A x̃ is computed and backpropagated
    (`down_projection`, IMoD) or how the low-rank output combines with the base output (`forward`, DoRA);
    `project_down` is the one place that computes u, so the dominance-rate probe sees every LoRA-family method
    the same way.
    """

    lora_family: ClassVar[bool] = True

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        self.rank, self.scaling, self.dropout = lora_hyper(cfg)
        self.lora_A = init_down_(self._new_param(cfg.rank, self.in_features))
        self.lora_B = self._new_param(self.out_features, cfg.rank)
        self.probe: DominanceProbe | None = None  # set by DominanceProbe while it records

    def down_projection(self, x: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """u = A x_in; `x` is the layer input before dropout (IMoD's backward of this product also reads it)."""
        return F.linear(x_in, self.lora_A)

    def project_down(self, x: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """u = A x_in for x_in = dropout(x), recorded by an active dominance probe."""
        u = self.down_projection(x, x_in)
        if self.probe is not None and u.requires_grad:
            self.probe.record(self, x_in, u)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        u = self.project_down(x, self.dropout(x))
        # out + s·(u Bᵀ) as one fused GEMM-with-add instead of matmul, scale and add (three passes over `out`).
        fused = torch.addmm(
            out.reshape(-1, self.out_features), u.reshape(-1, self.rank), self.lora_B.t(), alpha=self.scaling
        )
        return fused.view(out.shape)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def peft_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}


class MultiLowRankLinear(AdapterLinear):
    """Base of the token-dependent LoRA variants (uni-modal LoRA, MokA, LoRAMoE, HydraLoRA): several down projections
    A_i (r x d) stacked as `lora_A` [n_down, r, d], several up projections B_j (o x r) stacked as `lora_B`
    [o, n_up, r], LoRA's init, scaling and dropout. Subclasses weight the per-token activations u_ij; the output is
    h = W0 x + s · Σ_j B_j u_j in one GEMM over the concatenated rank axis (no loop over paths, batch or tokens).

    Not mergeable: which path a token takes depends on the token (modality or router), so no fixed weight does it.
    """

    mergeable: ClassVar[bool] = False

    def __init__(
        self,
        base: nn.Linear,
        cfg: AdapterConfig,
        ctx: ModalityContext,
        depth: tuple[int, int],
        name: str,
        n_down: int,
        n_up: int,
    ):
        super().__init__(base, cfg, ctx, depth, name)
        self.rank, self.scaling, self.dropout = lora_hyper(cfg)
        self.lora_A = init_down_(self._new_param(n_down, cfg.rank, self.in_features))
        self.lora_B = self._new_param(self.out_features, n_up, cfg.rank)

    def project_down(self, x: torch.Tensor) -> torch.Tensor:
        """u_i = A_i dropout(x) for every A: [..., n_down, r]."""
        u = F.linear(self.dropout(x), self.lora_A.view(-1, self.in_features))
        return u.unflatten(-1, self.lora_A.shape[:2])

    def project_up(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """W0 x + s · Σ_j B_j u_j for u [..., n_up, r]."""
        out = self.base_layer(x)
        b = self.lora_B.view(self.out_features, -1)
        fused = torch.addmm(out.reshape(-1, self.out_features), u.reshape(-1, b.shape[1]), b.t(), alpha=self.scaling)
        return fused.view(out.shape)


def router_weights(router: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Token-level softmax gate g(x) = softmax(W_g x) over the router's rows: [..., n]."""
    return torch.softmax(F.linear(x, router), dim=-1)
