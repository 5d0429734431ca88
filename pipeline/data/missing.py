"""Missing-modality training (MoRA's protocol): which samples lose a modality, and what the model sees instead.

A share `rate` (η) of the samples loses `type` (audio or visual); with `type: both` the affected samples are split,
`both_ratio` of them losing the visual input and the rest the audio, as MoRA mixes its missing cases. Whether and
what a sample loses is a pure function of (`seed`, the sample's source and id): the same on every rank, in every
epoch and after a resume, whatever the shuffling. A sample that does not have the chosen modality is left as it is.

`fill` says what replaces the lost input:
- `drop`: its media and placeholder go, so the sequence has no tokens of that modality;
- `placeholder`: the encoder gets a neutral input of the same shape (black frames/images, silence), so the token
  layout is that of the complete sample. MoRA feeds an all-ones image or an empty string for the same purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.model.processor import AVSample

MODALITY_TAGS = {"visual": ("<image>", "<video>"), "audio": ("<audio>",)}


@dataclass
class MissingConfig:
    rate: float = 0.0  # η: share of samples that lose a modality (0: every sample complete)
    type: str = "audio"  # audio | visual | both
    both_ratio: float = 0.5  # type both: share of the affected samples that lose the visual input
    fill: str = "drop"  # drop | placeholder
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"missing.rate: must be in [0, 1], got {self.rate}")
        if self.type not in ("audio", "visual", "both"):
            raise ValueError(f"missing.type: '{self.type}' is not one of audio, visual, both")
        if not 0.0 <= self.both_ratio <= 1.0:
            raise ValueError(f"missing.both_ratio: must be in [0, 1], got {self.both_ratio}")
        if self.fill not in ("drop", "placeholder"):
            raise ValueError(f"missing.fill: '{self.fill}' is not one of drop, placeholder")


def _uniform(seed: int, salt: str, key: str) -> float:
    """A uniform draw in [0, 1) that depends only on its arguments (not on Python's per-process hash seed)."""
    digest = hashlib.sha256(f"{seed}/{salt}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_key(sample: AVSample) -> str:
    return f"{sample.meta.get('source')}/{sample.meta.get('id')}"


def lost_modality(cfg: MissingConfig, key: str) -> str | None:
    """The modality the sample `key` loses under `cfg` ("audio", "visual"), or None."""
    if cfg.rate <= 0 or _uniform(cfg.seed, "rate", key) >= cfg.rate:
        return None
    if cfg.type != "both":
        return cfg.type
    return "visual" if _uniform(cfg.seed, "which", key) < cfg.both_ratio else "audio"


def has_modality(sample: AVSample, modality: str) -> bool:
    return sample.audio is not None if modality == "audio" else bool(sample.images) or sample.video is not None


def remove_modality(sample: AVSample, modality: str, fill: str) -> AVSample:
    """A copy of `sample` without `modality`'s real input: dropped with its placeholders, or neutral (see above)."""
    changed: dict[str, Any]
    if modality == "audio":
        audio = None if fill == "drop" else np.zeros_like(sample.audio)
        changed = {"audio": audio}
    else:
        video = sample.video
        changed = {
            "images": []
            if fill == "drop"
            else [
                Image.new("RGB", img.size) if isinstance(img, Image.Image) else np.zeros_like(img)
                for img in sample.images
            ],
            "video": None if fill == "drop" or video is None else np.zeros_like(video),
        }
    if fill == "drop":
        pattern = re.compile("|".join(rf"{re.escape(tag)}\s*" for tag in MODALITY_TAGS[modality]))
        changed["conversations"] = [
            {**turn, "value": pattern.sub("", turn["value"])} if isinstance(turn.get("value"), str) else turn
            for turn in sample.conversations
        ]
    return dataclasses.replace(sample, **changed, meta={**sample.meta, "missing": modality})


def apply_missing(sample: AVSample, cfg: MissingConfig) -> AVSample:
    """The sample as training sees it under `cfg` (`meta["missing"]` names what it lost)."""
    lost = lost_modality(cfg, sample_key(sample))
    if lost is None or not has_modality(sample, lost):
        return sample
    return remove_modality(sample, lost, cfg.fill)
