"""Trainable projectors from an encoder's feature space to the LLM's embedding space.

`mlp2x_gelu` is LLaVA-1.5's Linear-GELU-Linear and keeps every encoder token. `qformer` compresses each item (frame or
audio window) to a fixed number of learned queries with transformers' `Blip2QFormerModel`, then a 2-layer MLP to the
LLM width, as MokA and Crab do (32 queries, 2 layers).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

PROJECTORS = ("mlp2x_gelu", "qformer")


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class QFormerProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_queries: int, num_layers: int, hidden_size: int | None = None):
        super().__init__()
        hidden = hidden_size or min(768, max(64, in_dim))
        heads = max(1, hidden // 64)
        config = Blip2QFormerConfig(
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            encoder_hidden_size=in_dim,
            cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(config)
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden) * 0.02)
        self.mlp = mlp2x_gelu(hidden, out_dim)
        self.num_queries = num_queries

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(feats.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=feats).last_hidden_state
        return self.mlp(out)


def build_projector(kind: str, in_dim: int, out_dim: int, num_queries: int = 32, num_layers: int = 2) -> nn.Module:
    if kind == "mlp2x_gelu":
        return mlp2x_gelu(in_dim, out_dim)
    if kind == "qformer":
        return QFormerProjector(in_dim, out_dim, num_queries, num_layers)
    raise ValueError(f"unknown projector '{kind}' (known: {', '.join(PROJECTORS)})")


def tokens_out(kind: str, tokens_in: int, num_queries: int) -> int:
    """How many LLM tokens one encoder item (frame / audio window) becomes after projection."""
    return num_queries if kind == "qformer" else tokens_in
