"""Shared adapter machinery: the wrapped-linear base class and the LoRA core that DoRA and IMoD extend.

An adapter replaces an `nn.Linear` by a module that keeps the original layer as `base_layer` (frozen) and adds its
own parameters. Keeping the original module, rather than copying its weight, means ZeRO-3 partitioning, dtype and
device of the base weight are untouched, and `merge` can hand back a plain `nn.Linear`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.model.modality import ModalityContext


class AdapterLinear(nn.Module):
    """Base of every adapter: wraps `base_layer` and knows how to fold itself back into one `nn.Linear`.

    `depth` is (index of the block this layer sits in, number of blocks in its stack); methods whose behaviour
    depends on depth (IMoD's shared ratio) read it, the others ignore it.
    """

    mergeable: ClassVar[bool] = True

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__()
        self.base_layer = base
        self.ctx = ctx
        self.depth = depth
        self.layer_name = name
        self.in_features = base.in_features
        self.out_features = base.out_features

    @classmethod
    def layer_factory(cls, cfg: AdapterConfig) -> Callable[..., AdapterLinear]:
        """What `attach` calls once per target layer (with this class's constructor arguments). Called once per
        attach, so a method whose layers share run-level state (MoRA's cross-tower registry) creates it here."""
        return cls

    def _new_param(self, *shape: int) -> nn.Parameter:
        w = self.base_layer.weight
        return nn.Parameter(torch.zeros(*shape, device=w.device, dtype=w.dtype))

    def delta_weight(self) -> torch.Tensor:
        """Change of the weight matrix that merging applies (same shape as the base weight)."""
        raise NotImplementedError

    def merged_weight(self) -> torch.Tensor:
        return self.base_layer.weight + self.delta_weight()

    def merged_bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain `nn.Linear` computing what this adapter computes (in eval mode)."""
        bias = self.merged_bias()
        w = self.base_layer.weight
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(self.merged_weight())
        if bias is not None:
            out.bias.copy_(bias)
        out.requires_grad_(w.requires_grad)
        return out


class LowRankLinear(AdapterLinear):
    """The LoRA core: h = W0 x + s · B A dropout(x), s = alpha/r (rsLoRA: alpha/sqrt(r)).

    A is kaiming-uniform and B zero, as in PEFT. Subclasses change how u = A x̃ is computed and backpropagated
    (`down_projection`, IMoD) or how the low-rank output combines with the base output (`forward`, DoRA);
    `project_down` is the one place that computes u, so the dominance-rate probe sees every LoRA-family method
    the same way.
    """

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        self.rank = cfg.rank
        self.scaling = cfg.alpha / (math.sqrt(cfg.rank) if cfg.rslora else cfg.rank)
        self.lora_A = self._new_param(cfg.rank, self.in_features)
        self.lora_B = self._new_param(self.out_features, cfg.rank)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.probe = None  # set by pipeline.adapters.dominance.DominanceProbe while it records

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
        fused = torch.addmm(out.reshape(-1, self.out_features), u.reshape(-1, self.rank), self.lora_B.t(),
                            alpha=self.scaling)
        return fused.view(out.shape)

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    """All adapter layers of `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (parameters and persistent buffers), excluding the wrapped base layers.

    The tensors share storage with the model, so copying into them loads a state.
    """
    state = {}
    for name, layer in adapter_layers(model).items():
        for key, tensor in layer.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = tensor
    return state
