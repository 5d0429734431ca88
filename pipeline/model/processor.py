"""Local stand-in for the lead's processor module: only the `AVSample` dataclass the data loader produces.

Replaced by main's `pipeline/model/processor.py` (same dataclass, plus the AVProcessor) when main is merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AVSample:
    """A conversation with its decoded media; placeholders in the human turns say where each medium goes."""

    conversations: list[dict]                  # [{"from": "human"|"gpt"|"system", "value": str}]
    images: list = field(default_factory=list) # PIL images or [H, W, 3] uint8 arrays, one per <image>, in order
    video: np.ndarray | None = None            # [T, H, W, 3] uint8 frames sampled uniformly
    audio: np.ndarray | None = None            # float32 mono waveform at the processor's sampling rate
    meta: dict = field(default_factory=dict)   # id, source, question type, answer, ...
