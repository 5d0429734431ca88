"""IMoD (Implicit Modality Decomposition): LoRA whose A receives extra, locally computed constraint gradients.

Partition. A (r x d) is split element-wise into text-exclusive (M_t), non-text-exclusive (M_o) and shared (M_s)
elements by a random permutation, with shared ratio r_s(l) = r_s(0) + depth_alpha·l/L and the rest split by
`text_share`. The partition is stored as the persistent int8 buffer `mask_ids` (0 text, 1 non-text, 2 shared), so it
is saved with the adapter and loads exactly; it is also reproducible from `mask_seed` and the layer name.

Constraints, on the layer input X of the micro-batch (rows = tokens; PAD rows belong to neither modality):
  L_TS = ||A_T X_tᵀ − A X_tᵀ||² = ||(A⊙M_o) X_tᵀ||²   (X_t: non-text rows zeroed)
  L_OS = ||A_O X_oᵀ − A X_oᵀ||² = ||(A⊙M_t) X_oᵀ||²   (X_o: text rows zeroed)
  L_MA = Σ_samples with both kinds [1 − (c_t + c_o)·cos(s̄_t, s̄_o)],  s = (A⊙M_s) x per token.
Their gradient λ1·∇(L_TS+L_OS) + λ2·∇L_MA is added to A's gradient by `_InjectGrad`, an autograd Function that is
the identity on A in forward and adds the term in backward; it never touches the loss or any other gradient.
The MSDC gradients are closed-form, 2((A⊙M) Xᵀ X)⊙M, computed as ((A⊙M) Xᵀ) X (r·N·d, never d x d); the MAAC
gradient reaches A through s, so only the small N x r map s -> L_MA is differentiated locally with autograd.
All three terms share one N x 3r projection and one 3r x d product.

Normalisation (what accumulates, and why): the injected term is the gradient of constraints that are *sums* over
tokens (MSDC) and over samples (MAAC) of the micro-batch the layer sees, added once per backward and not divided by
the accumulation steps. Sums are additive, so the micro-batches of an accumulation window inject exactly the term of
their union, while the task loss is divided by the accumulation steps by the loop (DeepSpeed does this). DeepSpeed
(and DDP) then average gradients over the data-parallel ranks; the term is multiplied by the world size so that,
after averaging, A's gradient is that of one process on the whole global batch:
  ∇_A mean task loss(global batch) + λ1 ∇_A Σ_global (L_TS + L_OS) + λ2 ∇_A Σ_global L_MA.
MAAC is therefore a sum over samples, not the mean the issue names: a mean would not accumulate exactly. Under fp16
the task gradient carries the loss scale and this term does not; use bf16 or fp32.

Recomputation: non-reentrant checkpointing re-runs forward but backpropagates the original graph, and reentrant
checkpointing runs the original forward without a graph; either way exactly one `_InjectGrad` node is backpropagated.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import LowRankLinear
from pipeline.model.modality import Modality, ModalityContext

TEXT_ID, NONTEXT_ID, SHARED_ID = 0, 1, 2


def shared_ratio(layer: int, num_layers: int, shared_ratio0: float, depth_alpha: float) -> float:
    """r_s(l) = r_s(0) + α·l/L, clipped to [0, 1]."""
    return min(1.0, max(0.0, shared_ratio0 + depth_alpha * layer / num_layers))


def partition_counts(numel: int, layer: int, num_layers: int, opts: dict) -> tuple[int, int, int]:
    """Number of (text, non-text, shared) elements of an A with `numel` elements at depth `layer`."""
    n_shared = round(numel * shared_ratio(layer, num_layers, opts["shared_ratio0"], opts["depth_alpha"]))
    n_text = round((numel - n_shared) * opts["text_share"])
    return n_text, numel - n_shared - n_text, n_shared


def partition_ids(shape: tuple[int, int], layer: int, num_layers: int, opts: dict, name: str) -> torch.Tensor:
    """Random interleaved partition of an r x d matrix: int8 ids (0 text, 1 non-text, 2 shared)."""
    numel = shape[0] * shape[1]
    n_text, n_other, _ = partition_counts(numel, layer, num_layers, opts)
    gen = torch.Generator().manual_seed(int(opts["mask_seed"]) * 1_000_003 + zlib.crc32(name.encode()))
    ids = torch.full((numel,), SHARED_ID, dtype=torch.int8)
    perm = torch.randperm(numel, generator=gen)
    ids[perm[:n_text]] = TEXT_ID
    ids[perm[n_text : n_text + n_other]] = NONTEXT_ID
    return ids.view(shape)


def modality_rows(ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 indicators (same shape as ids) of text and of non-text (visual or audio) positions; PAD is neither."""
    text = (ids == int(Modality.TEXT)).to(dtype)
    other = ((ids == int(Modality.VISUAL)) | (ids == int(Modality.AUDIO))).to(dtype)
    return text, other


def maac_loss(s: torch.Tensor, text: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Σ over samples having both kinds of tokens of 1 − (c_t + c_o)·cos(s̄_t, s̄_o); s is [B, T, r]."""
    n_t, n_o = text.sum(1), other.sum(1)
    mean_t = (s * text.unsqueeze(-1)).sum(1) / n_t.clamp(min=1).unsqueeze(-1)
    mean_o = (s * other.unsqueeze(-1)).sum(1) / n_o.clamp(min=1).unsqueeze(-1)
    c_t = (F.cosine_similarity(s, mean_t.unsqueeze(1), dim=-1) * text).sum(1) / n_t.clamp(min=1)
    c_o = (F.cosine_similarity(s, mean_o.unsqueeze(1), dim=-1) * other).sum(1) / n_o.clamp(min=1)
    per_sample = 1 - (c_t + c_o) * F.cosine_similarity(mean_t, mean_o, dim=-1)
    return (per_sample * ((n_t > 0) & (n_o > 0))).sum()


def constraint_grad(a: torch.Tensor, x: torch.Tensor, ids: torch.Tensor, mask_ids: torch.Tensor,
                    lambda1: float, lambda2: float) -> torch.Tensor:
    """λ1·∇_A(L_TS + L_OS) + λ2·∇_A L_MA for layer input x [B, T, d] (or [N, d]) and modality ids x.shape[:-1]."""
    r = a.shape[0]
    x2 = x.reshape(-1, x.shape[-1])
    text, other = modality_rows(ids.reshape(-1), x.dtype)
    masks, parts = [], []
    if lambda1:
        masks += [mask_ids == NONTEXT_ID, mask_ids == TEXT_ID]
    if lambda2:
        masks.append(mask_ids == SHARED_ID)
    masks = [m.to(a.dtype) for m in masks]
    proj = x2 @ torch.cat([a * m for m in masks]).t()  # N x (k·r): (A⊙M) xₙ for every token n
    chunks = proj.split(r, dim=1)
    if lambda1:
        # ∇ of ||(A⊙M_o) X_tᵀ||² w.r.t. the projection is 2·P on text rows (and symmetrically for L_OS).
        parts += [(2 * lambda1) * chunks[0] * text.unsqueeze(1), (2 * lambda1) * chunks[1] * other.unsqueeze(1)]
    if lambda2:
        seq = x.shape[-2] if x.dim() >= 3 else x.shape[0]  # an [N, d] input is one sample
        with torch.enable_grad():
            s = chunks[-1].detach().view(-1, seq, r).requires_grad_(True)
            (g_s,) = torch.autograd.grad(maac_loss(s, text.view(-1, seq), other.view(-1, seq)), s)
        parts.append(lambda2 * g_s.reshape(-1, r))
    grads = (torch.cat(parts, dim=1).t() @ x2).split(r, dim=0)  # one (k·r) x d product for all terms
    return sum(g * m for g, m in zip(grads, masks))


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _InjectGrad(torch.autograd.Function):
    """Identity on A in forward; in backward adds the constraint gradient of this layer's input to A's gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x: torch.Tensor, ids: torch.Tensor, layer: "IMoDLinear") -> torch.Tensor:
        ctx.save_for_backward(a, x, ids)
        ctx.layer = layer
        return a.view_as(a)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, x, ids = ctx.saved_tensors
        layer = ctx.layer
        extra = constraint_grad(a, x, ids, layer.mask_ids, layer.lambda1, layer.lambda2)
        return grad + extra * _world_size(), None, None, None


class IMoDLinear(LowRankLinear):
    """LoRA with IMoD's partition masks and gradient injection; same parameters, same merge as LoRA."""

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        opts = cfg.resolved_options()
        self.lambda1 = float(opts["lambda1"])
        self.lambda2 = float(opts["lambda2"])
        ids = partition_ids(tuple(self.lora_A.shape), depth[0], depth[1], opts, name)
        self.register_buffer("mask_ids", ids.to(base.weight.device))

    def a_matrix(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lora_A
        if not (self.lambda1 or self.lambda2) or not (torch.is_grad_enabled() and a.requires_grad):
            return a
        return _InjectGrad.apply(a, x.detach(), self.ctx.ids_for(x), self)
