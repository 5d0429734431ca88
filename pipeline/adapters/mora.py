"""MoRA (Missing-modality LoRA, ICLR 2026), generalised from CLIP's two towers to the towers in `adapter.scope`.

A layer of tower t (frozen square weight W0, d_t × d_t) in block i of that tower computes h = W x + b with

    V_spec = W0 + s · B A                       modality-specific path: the shared LoRA core (A, B, s = alpha/r)
    V_sh   = W0 + s · S_tᵀ G_o S_t               modality-shared path, S_t = S[t, i] (r × d_t)
    G_u    = S_u S_uᵀ                            r × r Gram matrix of tower u's S at the paired block
    G_o    = mean of G_u over the other towers   (two towers: the other tower's G, exactly the paper's exchange)
    W      = α_tower · V_spec / ‖V_spec‖_F + α_shared · V_sh / ‖V_sh‖_F

Where the paper leaves a choice, this is what is implemented and why:
- The magnitudes are two learnable scalars per layer against Frobenius norms, as the paper writes them. The updates
  sit inside the normalisation (DoRA's form, as in the public code): in the paper's literal sum
  α_v W̄0 + B A + α_s W̄0 + SᵀGS only α_v + α_s would matter, so the two scalars could not balance the paths.
- Init: A kaiming, B zero (the LoRA core), S kaiming like A, α_tower = ‖W0‖_F and α_shared = 0, so an attached
  model is exactly the base model (the public code starts both magnitudes at the norm, i.e. at 2·W0). S receives
  gradient once α_shared has left 0, i.e. from the second step on.
- One S per (tower, block), shared by all of that block's target layers, like the public code's per-layer-index
  pair. Towers of different depth pair by relative depth: block i of an L_t-block tower reads block ⌊i·L_u/L_t⌋
  of tower u. More than two towers: G_o is the mean of the others' G (keeps G_o's scale independent of the number
  of towers and every other tower's influence equal). The shared rank and scale are the config's rank and s.
- S_tᵀ G_o S_t is d_t × d_t, so only square layers (in == out) can be targets: q/o projections of the LLM (k/v too
  when the LLM has no grouped-query attention) and q/k/v/out_proj of the CLIP/SigLIP/Whisper encoders.
- Dropout applies to the adapter paths' input; the W0 term sees x (merging is exact in eval mode).
- The norms are computed in rank space (no d × d matrix in the forward) and not detached:
  ‖V_spec‖² = ‖W0‖² + 2s·tr(A W0ᵀ B) + s²·⟨BᵀB, AAᵀ⟩,  ‖V_sh‖² = ‖W0‖² + 2s·⟨S W0 Sᵀ, G_o⟩ + s²·tr(G_o H G_o H),
  H = S Sᵀ.
Gradients reach the other towers' S through G_o, so the towers' updates are coupled as the paper intends.

Streamed merge. Folding one layer needs its own S and every other tower's S at the paired blocks. The streamed merge
(`pipeline.merge`) materialises the LLM one layer at a time, so it first `pin_shared`s all S from the run's export:
every layer then reads S from there, and G_o comes from the same `other_gram` as in training.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import AdapterLinear, adapter_layers
from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import LowRankLinear
from pipeline.modality import ModalityContext


class MoRAShared:
    """Run-level state of one `attach`: the layer owning each (tower, block)'s S and each tower's block count.

    A plain object, not a module: S is a parameter of exactly one adapter layer (counted, saved, loaded and
    partitioned once by the usual per-layer machinery) while every layer of every tower reads it through here.
    """

    def __init__(self, towers: list[str]):
        self.towers = list(towers)
        self.owners: dict[tuple[str, int], MoRALinear] = {}
        self.blocks: dict[str, int] = {}
        self.pinned: dict[tuple[str, int], torch.Tensor] = {}

    def tower_of(self, name: str) -> str:
        """The longest `adapter.scope` prefix that layer `name` falls under."""
        return max((t for t in self.towers if name == t or name.startswith(t + ".")), key=len)

    def join(self, layer: MoRALinear) -> bool:
        """Register `layer`; True if it is the first of its (tower, block) and so owns that block's S."""
        key = (layer.tower, layer.block)
        self.blocks[layer.tower] = max(self.blocks.get(layer.tower, 0), layer.depth[1])
        owner = self.owners.setdefault(key, layer)
        if owner.in_features != layer.in_features:
            raise ValueError(
                f"adapter.targets: mora shares one S per tower block, but '{layer.layer_name}' is "
                f"{layer.in_features} wide and '{owner.layer_name}' {owner.in_features}"
            )
        return owner is layer

    def pin(self, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
        """Read every S from `state` (tensors by full name, `<owner layer>.shared_S`), cast to `dtype`, instead of
        from the owners' parameters, which may be on the meta device."""
        self.pinned = {key: state[f"{owner.layer_name}.shared_S"].to(dtype) for key, owner in self.owners.items()}

    def weight(self, tower: str, block: int) -> torch.Tensor:
        """S of (tower, block), r × d_tower."""
        if (tower, block) in self.pinned:
            return self.pinned[(tower, block)]
        owner = self.owners.get((tower, block))
        if owner is None:
            raise ValueError(
                f"mora: tower '{tower}' has no target layer in block {block}, which another tower's "
                "block pairs with; target the same modules in every block"
            )
        return owner.shared_S

    def gram(self, tower: str, block: int) -> torch.Tensor:
        """G = S Sᵀ (r × r, symmetric positive semi-definite)."""
        s = self.weight(tower, block)
        return s @ s.t()

    def paired_block(self, tower: str, block: int, other: str) -> int:
        """Block of `other` at the same relative depth as `block` of `tower`."""
        return block * self.blocks[other] // self.blocks[tower]

    def other_gram(self, tower: str, block: int) -> torch.Tensor:
        """G_o: the mean of the other towers' Gram matrices at the paired blocks."""
        others = [u for u in self.blocks if u != tower]
        if not others:
            raise ValueError(
                f"mora: only tower '{tower}' has target layers; adapter.scope {self.towers} must "
                "name at least two towers with square target layers"
            )
        grams = [self.gram(u, self.paired_block(tower, block, u)) for u in others]
        return torch.stack(grams).mean(0)


class MoRALinear(LowRankLinear, name="mora"):
    """One MoRA layer; see the module docstring for the formula and the choices made."""

    # attention projections of the LLM (o_proj) and of the CLIP/SigLIP/Whisper towers (out_proj); `can_adapt` keeps
    # the square ones (k/v drop out under grouped-query attention)
    default_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj")

    def __init__(
        self,
        base: nn.Linear,
        cfg: AdapterConfig,
        ctx: ModalityContext,
        depth: tuple[int, int],
        name: str,
        shared: MoRAShared,
    ):
        if base.in_features != base.out_features:
            raise ValueError(
                f"adapter.targets: mora adapts square layers only (in == out, e.g. q_proj/o_proj); "
                f"'{name}' is {base.in_features} -> {base.out_features}"
            )
        super().__init__(base, cfg, ctx, depth, name)
        self.shared = shared
        self.tower = shared.tower_of(name)
        self.block = depth[0]
        self.alpha_tower = self._new_param(1)  # 1-element: ZeRO-3 partitions 0-d tensors badly
        self.alpha_shared = self._new_param(1)
        with torch.no_grad():
            self.alpha_tower.fill_(torch.linalg.norm(base.weight))
        if shared.join(self):
            self.shared_S = self._new_param(cfg.rank, self.in_features)
            nn.init.kaiming_uniform_(self.shared_S, a=math.sqrt(5))

    @classmethod
    def layer_factory(cls, cfg: AdapterConfig) -> Callable[..., AdapterLinear]:
        return functools.partial(cls, shared=MoRAShared(cfg.scope))

    @classmethod
    def can_adapt(cls, layer: nn.Linear) -> bool:
        return layer.in_features == layer.out_features

    @classmethod
    def check_config(cls, cfg: AdapterConfig) -> None:
        if len(cfg.scope) < 2:
            raise ValueError(
                f"adapter.scope: mora needs at least two towers (e.g. [vision, audio, llm]), got {cfg.scope}"
            )

    @classmethod
    def check_attached(cls, layers: Mapping[str, AdapterLinear]) -> None:
        """Every tower of the scope has target layers, and every block reads an S at each other tower's paired
        block: what the forward needs, found when the adapter is attached (before training starts)."""
        for registry in {id(m.shared): m.shared for m in layers.values() if isinstance(m, cls)}.values():
            empty = [t for t in registry.towers if t not in registry.blocks]
            if empty:
                raise ValueError(
                    f"adapter.targets: mora finds no square target layer in tower '{empty[0]}' of adapter.scope "
                    f"{registry.towers}; target its square projections too (e.g. q_proj, out_proj)"
                )
            for tower, block in list(registry.owners):
                for other in registry.blocks:
                    if other != tower:  # raises when the paired block of `other` has no S
                        registry.weight(other, registry.paired_block(tower, block, other))

    @classmethod
    def prepare_merge(cls, model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
        """A layer's fold reads every tower's S: pin them all from the export (see the module docstring)."""
        pin_shared(model, state, dtype)

    def _coupling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S of this layer's block, G_o)."""
        return self.shared.weight(self.tower, self.block), self.shared.other_gram(self.tower, self.block)

    def _norms(self, w0: torch.Tensor, s_own: torch.Tensor, g_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖V_spec‖_F, ‖V_sh‖_F) from r × r products (formulas in the module docstring)."""
        s, a, b = self.scaling, self.lora_A, self.lora_B
        base_sq = w0.pow(2).sum()
        spec_sq = base_sq + 2 * s * ((a @ w0.t()) * b.t()).sum() + s * s * ((b.t() @ b) * (a @ a.t())).sum()
        gh = g_other @ (s_own @ s_own.t())
        shared_sq = base_sq + 2 * s * ((s_own @ w0 @ s_own.t()) * g_other).sum() + s * s * (gh * gh.t()).sum()
        return spec_sq.sqrt(), shared_sq.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w0 = self.base_layer.weight
        s_own, g_other = self._coupling()
        n_spec, n_shared = self._norms(w0, s_own, g_other)
        c_spec, c_shared = self.alpha_tower / n_spec, self.alpha_shared / n_shared
        x_in = self.dropout(x)
        u = self.project_down(x, x_in)
        v = F.linear(F.linear(x_in, s_own), g_other)  # (S x̃)ᵀ G_o, G_o symmetric
        out = (c_spec + c_shared) * F.linear(x, w0)
        out = out + (c_spec * self.scaling) * F.linear(u, self.lora_B) + (c_shared * self.scaling) * (v @ s_own)
        bias = self.base_layer.bias
        return out if bias is None else out + bias

    def merged_weight(self) -> torch.Tensor:
        w0 = self.base_layer.weight
        s_own, g_other = self._coupling()
        v_spec = w0 + self.scaling * (self.lora_B @ self.lora_A)
        v_shared = w0 + self.scaling * (s_own.t() @ g_other @ s_own)
        return (self.alpha_tower / torch.linalg.norm(v_spec)) * v_spec + (
            self.alpha_shared / torch.linalg.norm(v_shared)
        ) * v_shared

    def delta_weight(self) -> torch.Tensor:
        return self.merged_weight() - self.base_layer.weight


def pin_shared(model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Make every MoRA layer of `model` read S from `state` (a run's exported tensors, by full name) in `dtype`: what
    the streamed merge needs to fold LLM layers whose owners of S are not materialised (module docstring)."""
    registries = {id(m.shared): m.shared for m in adapter_layers(model).values() if isinstance(m, MoRALinear)}
    for registry in registries.values():
        registry.pin(state, dtype)
