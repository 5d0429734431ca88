"""IMoD (Implicit Modality Decomposition): LoRA whose A receives extra, locally computed constraint gradients.

Partition. A (r x d) is split element-wise into text-exclusive (M_t), non-text-exclusive (M_o) and shared (M_s)
elements by a random permutation, with shared ratio r_s(l) = r_s(0) + depth_alpha·l/L and the rest split by
`text_share`. The partition is stored as the persistent int8 buffer `mask_ids` (0 text, 1 non-text, 2 shared), so it
is saved with the adapter and loads exactly; it is also reproducible from `mask_seed` and the layer name.

Constraints, on the layer input X of the micro-batch (rows = tokens; PAD rows belong to neither modality):
  L_TS = ||A_T X_tᵀ − A X_tᵀ||² = ||(A⊙M_o) X_tᵀ||²   (X_t: non-text rows zeroed)
  L_OS = ||A_O X_oᵀ − A X_oᵀ||² = ||(A⊙M_t) X_oᵀ||²   (X_o: text rows zeroed)
  L_MA = Σ_samples with both kinds [1 − (c_t + c_o)·cos(s̄_t, s̄_o)],  s = (A⊙M_s) x per token
(a sample is a row of a padded batch or a segment of a packed row: MAAC runs in the per-sample `SampleLayout`).
Their gradient λ1·∇(L_TS+L_OS) + λ2·∇L_MA reaches A only: `_IMoDProjection` computes u = A x̃ (x̃ = dropout(x))
exactly as LoRA does and owns its backward, so the constraint terms join A's own gradient product. With
P_k = X (A⊙M_k)ᵀ (N x r, k = t, o, s), the text/non-text row indicators τ, ω and g = ∂L_task/∂u (all closed form):
  ∇_A L_TS = 2((τ⊙P_o)ᵀ X)⊙M_o,   ∇_A L_OS = 2((ω⊙P_t)ᵀ X)⊙M_t,   ∇_A L_MA = (G_sᵀ X)⊙M_s,  G_s = ∂L_MA/∂P_s,
and since the masks partition A, without dropout (x̃ = X) the whole gradient is one 3r x N x d product
  grad_A = Σ_k ((g + E_k)ᵀ X)⊙M_k,  E_t = 2λ1 ω⊙P_t,  E_o = 2λ1 τ⊙P_o,  E_s = λ2 G_s,
whose three r x d blocks are selected element-wise by the partition. The products are ordered (A⊙M_k)Xᵀ then X, never
XᵀX (d x d). G_s is the hand-derived cosine-similarity gradient in rank space (`maac_grad`), batched over samples.
Saved for backward: LoRA's x̃ and A plus the modality ids (and x only when dropout makes x̃ differ from it).
λ1 = λ2 = 0 (or no gradient needed) takes LoRA's own F.linear, so it is LoRA bit for bit.

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
checkpointing runs the original forward without a graph; either way exactly one `_IMoDProjection` node is
backpropagated.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.core import LowRankLinear
from pipeline.modality import Modality, ModalityContext, SampleLayout, modality_rows

TEXT_ID, NONTEXT_ID, SHARED_ID = 0, 1, 2


@dataclass
class IMoDOptions:
    shared_ratio0: float = 0.2  # r_s(0): share of A's elements in the shared block at the first layer
    depth_alpha: float = 0.4  # r_s(l) = r_s(0) + depth_alpha * l / L
    text_share: float = 0.5  # fraction of the non-shared elements that are text-exclusive (the rest: non-text)
    lambda1: float = 1.0  # weight of the MSDC gradient (L_TS + L_OS)
    lambda2: float = 1e-4  # weight of the MAAC gradient (L_MA)
    mask_seed: int = 0  # seed of the element-wise partition masks

    def validate(self) -> None:
        for key in ("shared_ratio0", "text_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"adapter.options.{key}: must be in [0, 1], got {getattr(self, key)}")
        if self.lambda1 < 0 or self.lambda2 < 0:
            raise ValueError("adapter.options.lambda1/lambda2: must be >= 0")


def shared_ratio(layer: int, num_layers: int, shared_ratio0: float, depth_alpha: float) -> float:
    """r_s(l) = r_s(0) + α·l/L, clipped to [0, 1]."""
    return min(1.0, max(0.0, shared_ratio0 + depth_alpha * layer / num_layers))


def partition_counts(numel: int, layer: int, num_layers: int, opts: IMoDOptions) -> tuple[int, int, int]:
    """Number of (text, non-text, shared) elements of an A with `numel` elements at depth `layer`."""
    n_shared = round(numel * shared_ratio(layer, num_layers, opts.shared_ratio0, opts.depth_alpha))
    n_text = round((numel - n_shared) * opts.text_share)
    return n_text, numel - n_shared - n_text, n_shared


def partition_ids(shape: tuple[int, int], layer: int, num_layers: int, opts: IMoDOptions, name: str) -> torch.Tensor:
    """Random interleaved partition of an r x d matrix: int8 ids (0 text, 1 non-text, 2 shared)."""
    numel = shape[0] * shape[1]
    n_text, n_other, _ = partition_counts(numel, layer, num_layers, opts)
    gen = torch.Generator().manual_seed(int(opts.mask_seed) * 1_000_003 + zlib.crc32(name.encode()))
    ids = torch.full((numel,), SHARED_ID, dtype=torch.int8)
    perm = torch.randperm(numel, generator=gen)
    ids[perm[:n_text]] = TEXT_ID
    ids[perm[n_text : n_text + n_other]] = NONTEXT_ID
    return ids.view(shape)


class RowWeights(NamedTuple):
    """What the constraints need from a modality map [B, T]; the same for every layer of a step."""

    msdc: torch.Tensor  # [N, 3, 1]: ω, τ, 0 — the rows on which P_t, P_o (and not P_s) enter L_OS, L_TS
    mean: torch.Tensor  # [B, 2, T]: text / non-text indicators over their counts (the sequence means)
    rows: torch.Tensor  # [B, T, 2]: `mean` transposed, zeroed for samples lacking either kind (MAAC skips them)


def row_weights(ids: torch.Tensor, dtype: torch.dtype) -> RowWeights:
    """RowWeights of modality ids [B, T] (or [N]: one sample)."""
    text, other = modality_rows(ids.reshape(-1, ids.shape[-1]), dtype)
    w = torch.stack((text, other), dim=1)
    count = w.sum(-1, keepdim=True)
    mean = w / count.clamp(min=1)
    valid = (count > 0).all(1, keepdim=True)
    msdc = torch.stack((other.view(-1), text.view(-1), torch.zeros_like(text.view(-1))), 1).unsqueeze(-1)
    return RowWeights(msdc, mean, (mean * valid).transpose(1, 2))


def _row_weights_of(ids: torch.Tensor, layout: SampleLayout, dtype: torch.dtype) -> RowWeights:
    """row_weights with the per-token MSDC rows of `ids` and the per-sample means of its per-sample layout (a packed
    row's samples as rows), computed once per modality map: every layer's backward in a step sees the same map."""
    key = ("imod.row_weights", dtype)
    if key not in layout.memo:
        tokens = row_weights(ids, dtype)
        samples = tokens if layout.identity else row_weights(layout.to_samples(ids, int(Modality.PAD)), dtype)
        layout.memo[key] = RowWeights(tokens.msdc, samples.mean, samples.rows)
    return layout.memo[key]


def maac_grad(s: torch.Tensor, mean: torch.Tensor, rows: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """∂L_MA/∂s for s [B, T, r] (`mean`, `rows` from `row_weights`): L_MA's gradient without autograd.

    Per sample with both kinds (others get 0), modality k ∈ {t, o} with n_k rows, mean m_k, ν_k = max(|m_k|, eps),
    m̂_k = m_k/ν_k, n_i = max(|s_i|, eps), ŝ_i = s_i/n_i, cos_ik = ŝ_i·m̂_k, c_k = mean_{i∈k} cos_ik, κ = m̂_t·m̂_o:
      −ν_k ∂L/∂m_k = κ Σ_{j∈k} ŝ_j/n_k + (c_t + c_o) m̂_k' − κ(c_k + c_t + c_o) m̂_k        (k' the other modality)
      ∂L/∂s_i = ∂L/∂m_k / n_k − κ (m̂_k − cos_ik ŝ_i) / (n_k n_i)                          (i a row of modality k)
    The eps clamps are those of F.cosine_similarity, so zero-norm rows and means get its gradient (exactly so for
    norms 0 or ≥ eps).
    """
    norm = torch.linalg.vector_norm(s, dim=-1, keepdim=True).clamp_(min=eps)
    unit = s / norm
    means = torch.bmm(mean, s)  # [B, 2, r]
    nu = torch.linalg.vector_norm(means, dim=-1, keepdim=True).clamp_(min=eps)
    mean_hat = means / nu
    cos = torch.bmm(unit, mean_hat.transpose(1, 2))  # [B, T, 2]
    c = (mean * cos.transpose(1, 2)).sum(-1, keepdim=True)  # [B, 2, 1]
    kappa = torch.bmm(mean_hat[:, :1], mean_hat[:, 1:].transpose(1, 2))  # [B, 1, 1]
    c_sum = c.sum(1, keepdim=True)
    g_mean = torch.addcmul(c_sum * mean_hat.flip(1), kappa, torch.bmm(mean, unit))
    g_mean = torch.addcmul(g_mean, kappa * (c + c_sum), mean_hat, value=-1) / -nu
    inner = torch.baddbmm(unit * (rows * cos).sum(-1, keepdim=True), rows, mean_hat, alpha=-1)
    return torch.baddbmm(inner * (kappa / norm), rows, g_mean)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _IMoDProjection(torch.autograd.Function):
    """u = A x̃ in forward (LoRA's product, same bits); backward gives LoRA's ∂x̃ and A's task + constraint gradient."""

    @staticmethod
    def forward(
        ctx,
        x_in: torch.Tensor,
        a: torch.Tensor,
        x: torch.Tensor,
        ids: torch.Tensor,
        layout: SampleLayout,
        layer: IMoDLinear,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_in, a, ids, None if x is x_in else x)
        ctx.layer, ctx.layout = layer, layout
        return F.linear(x_in, a)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_in, a, ids, x = ctx.saved_tensors
        layer = ctx.layer
        r, d = a.shape
        g2 = g.reshape(-1, r)
        # Same mm as LoRA's backward; matmul returns a non-view, which autograd may reuse in place when it sums the
        # gradients of x (a .view of the product keeps a second reference to its storage and could not be reused).
        grad_x = torch.matmul(g, a) if ctx.needs_input_grad[0] else None
        x_in2 = x_in.reshape(-1, d)
        x2 = x_in2 if x is None else x.reshape(-1, d)
        blocks, index = layer.partition(a.dtype)
        p = (x2 @ (a * blocks).view(3 * r, d).t()).view(-1, 3, r)  # P_t, P_o, P_s per token
        layout = ctx.layout
        weights = _row_weights_of(ids, layout, p.dtype)
        scale = _world_size()
        # cols[:, k] = g + E_k; the shared block's E_s (MAAC) is added below.
        cols = torch.addcmul(
            g2.unsqueeze(1) if x is None else torch.zeros_like(p), p, weights.msdc, value=2 * layer.lambda1 * scale
        )
        if layer.lambda2:  # per sample: a packed row's samples are rows of the per-sample layout
            s = layout.to_samples(p[:, 2].view(*layout.shape, r))  # a strided view, no copy (unpacked)
            g_s = layout.to_tokens(maac_grad(s, weights.mean, weights.rows))
            cols[:, 2].add_(g_s.reshape(-1, r), alpha=layer.lambda2 * scale)
        grad_a = (cols.view(-1, 3 * r).t() @ x2).view(3, r, d).gather(0, index)[0]
        if x is not None:  # dropout: the task gradient sees x̃, the constraints x
            grad_a = grad_a + g2.t() @ x_in2
        return grad_x, grad_a, None, None, None, None


class IMoDLinear(LowRankLinear, name="imod"):
    """LoRA with IMoD's partition masks and gradient injection; same parameters, same merge as LoRA (exported to
    PEFT as LoRA: at inference it is LoRA)."""

    Options = IMoDOptions
    peft_options: ClassVar[dict[str, Any] | None] = {}
    mask_ids: torch.Tensor  # persistent buffer: the partition (0 text, 1 non-text, 2 shared)

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        opts = cfg.method_options()
        self.lambda1 = float(opts.lambda1)
        self.lambda2 = float(opts.lambda2)
        rank, width = self.lora_A.shape
        ids = partition_ids((rank, width), depth[0], depth[1], opts, name)
        self.register_buffer("mask_ids", ids.to(base.weight.device))
        self._partition: tuple[torch.Tensor, tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] | None = None

    def partition(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks M_t, M_o, M_s as 0/1 [3, r, d] of `dtype` (no cast when multiplied with A) and the block index
        [1, r, d]; rebuilt only when `mask_ids` changes (load_state_dict copies into it, `.to` replaces it)."""
        ids = self.mask_ids
        cached = self._partition
        if cached is None or cached[0] is not ids or cached[1] != (ids._version, dtype):
            blocks = torch.eq(ids, torch.arange(3, device=ids.device).view(3, 1, 1)).to(dtype)
            self._partition = cached = (ids, (ids._version, dtype), (blocks, ids.long().unsqueeze(0)))
        return cached[2]

    def down_projection(self, x: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        a = self.lora_A
        if not (self.lambda1 or self.lambda2) or not (torch.is_grad_enabled() and a.requires_grad):
            return F.linear(x_in, a)
        ids = self.ctx.ids_for(x)
        layout = self.ctx.layout_for(x.reshape(-1, ids.shape[-1], x.shape[-1]))
        return _IMoDProjection.apply(x_in, a, x if x_in is x else x.detach(), ids, layout, self)
