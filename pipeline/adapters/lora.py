"""LoRA (Hu et al. 2021): the shared low-rank core used as is."""

from __future__ import annotations

from pipeline.adapters.core import LowRankLinear


class LoRALinear(LowRankLinear):
    """h = W0 x + s · B A dropout(x); see `LowRankLinear`."""
