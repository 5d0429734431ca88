"""Non-Text Dominance Rate (IMoD paper): the share of A's elements whose Fisher information is larger for non-text
inputs than for text inputs.

Estimator. For every LoRA-family layer (LoRA, DoRA, IMoD) u = A x̃ (x̃ = dropout(x)) is the only place A enters, so
the task-loss gradient of A is exactly G_A = Σ_n g_n x̃_nᵀ with g_n = ∂L/∂u_n, whatever the method does after u.
Splitting the token sum by the modality of token n gives, per sample b,
  G_text[b] = Σ_{n ∈ b, text} g_n x̃_nᵀ,   G_nontext[b] = Σ_{n ∈ b, visual or audio} g_n x̃_nᵀ   (PAD tokens in neither),
and the diagonal Fisher is estimated as F = mean_b G[b]² (element-wise); a sample is a row of a padded batch or a
segment of a packed row (`SampleLayout`). R = |{(i,j): F_nontext > F_text}| / |A|,
over all recorded layers. Tokens of different samples do not interact in a transformer, so the per-sample parts of
one batched backward are per-sample gradients (all scaled by the same batch normalisation, which cancels in the
comparison). Only the task gradient is seen: IMoD's injected term is added to A's gradient, not to g.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.adapters.base import ADAPTERS, adapter_layers
from pipeline.adapters.core import LowRankLinear
from pipeline.modality import Modality, SampleLayout, modality_rows


@dataclass
class _LayerFisher:
    text: torch.Tensor
    nontext: torch.Tensor


@dataclass
class DominanceResult:
    rate: float
    per_layer: dict[str, float] = field(default_factory=dict)


class DominanceProbe:
    """While active (a `with` block), records the per-sample text / non-text Fisher of every LoRA-family A during
    the backward passes run inside the block. Use on a normal training step; it does not change any gradient.

        with DominanceProbe(model) as probe:
            loss = model(**batch).loss
            loss.backward()
        probe.result().rate
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {
            n: m for n, m in adapter_layers(model).items() if isinstance(m, LowRankLinear) and type(m).lora_family
        }
        if not self.layers:
            family = ", ".join(name for name, cls in ADAPTERS.items() if cls.lora_family)
            raise ValueError(f"DominanceProbe: the model has no LoRA-family adapter layer ({family})")
        self.fisher: dict[str, _LayerFisher] = {}

    def __enter__(self) -> DominanceProbe:
        for layer in self.layers.values():
            layer.probe = self
        return self

    def __exit__(self, *exc) -> None:
        for layer in self.layers.values():
            layer.probe = None

    def record(self, layer: LowRankLinear, x: torch.Tensor, u: torch.Tensor) -> None:
        """Called by the layer in forward with its A input x̃ and u = A x̃; the tensor hook dies with the graph."""
        x = x.detach()
        ids = layer.ctx.ids_for(x)
        layout = layer.ctx.layout_for(x) if x.dim() > 2 else None
        u.register_hook(lambda g: self._accumulate(layer.layer_name, x, ids, g, layout))

    @torch.no_grad()
    def _accumulate(
        self, name: str, x: torch.Tensor, ids: torch.Tensor, g: torch.Tensor, layout: SampleLayout | None
    ) -> None:
        if layout is None:  # an [N, d] input (encoder tower) is one sample
            x, ids, g = x.unsqueeze(0), ids.unsqueeze(0), g.unsqueeze(0)
        else:  # one row per sample, also for packed rows
            x, ids, g = layout.to_samples(x), layout.to_samples(ids, int(Modality.PAD)), layout.to_samples(g)
        x, g = x.reshape(-1, *x.shape[-2:]), g.reshape(-1, *g.shape[-2:]).to(x.dtype)
        text, other = modality_rows(ids.reshape(g.shape[:2]), g.dtype)
        g_text = torch.bmm((g * text.unsqueeze(-1)).transpose(1, 2), x)  # [B, r, d]
        g_other = torch.bmm((g * other.unsqueeze(-1)).transpose(1, 2), x)
        entry = self.fisher.get(name)
        if entry is None:
            entry = self.fisher[name] = _LayerFisher(torch.zeros_like(g_text[0]), torch.zeros_like(g_text[0]))
        entry.text += g_text.square().sum(0)
        entry.nontext += g_other.square().sum(0)

    def result(self) -> DominanceResult:
        """R over all recorded layers, plus each layer's own rate."""
        if not self.fisher:
            raise RuntimeError("DominanceProbe: nothing recorded; run forward and backward inside the `with` block")
        per_layer, dominated, total = {}, 0, 0
        for name, f in self.fisher.items():
            count = int((f.nontext > f.text).sum())  # sums, not means: the 1/samples cancels in the comparison
            per_layer[name] = count / f.text.numel()
            dominated += count
            total += f.text.numel()
        return DominanceResult(dominated / total, per_layer)
