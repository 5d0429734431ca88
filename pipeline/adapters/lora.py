"""LoRA (Hu et al. 2021): the shared low-rank core used as is."""

from __future__ import annotations

from typing import Any, ClassVar

from pipeline.adapters.core import LowRankLinear


class LoRALinear(LowRankLinear, name="lora"):
    """h = W0 x + s · B A dropout(x); see `LowRankLinear`."""

    peft_options: ClassVar[dict[str, Any] | None] = {}
