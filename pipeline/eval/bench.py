"""What the benchmark modules share: the evaluated item, the one-line input error, phrase matching, conditions.

Each benchmark module (`mmbench`, `pope`, `music_avqa`, `ave`, `mme`) provides
    ID_FIELDS    the id fields of its prediction lines, in key order
    MODALITIES   the inputs it has ("visual", "audio"), for `--missing`
    POINT_METRICS  metric names in points rather than fractions (MME's scores), shown as is in the table
    load(data, media_root) -> list[Item]     read the official format; `BenchError` on anything wrong
    score(items, texts) -> dict              metrics as fractions (MME scores: points, as the official tool)
    headline(metrics) -> float               the one number a summary table shows (continual accuracy matrix)
`load` reads ids, prompts and golds and names each item's media without touching them, so a predictions file scores
with no media on disk; `check_media` checks every media path exists (without decoding) before a model generates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONDITIONS = {"complete": frozenset(), "audio-missing": frozenset({"audio"}), "visual-missing": frozenset({"visual"})}


class BenchError(ValueError):
    """A bad benchmark input (file, column, media path, prediction id); the message is one line naming it."""


@dataclass
class Item:
    """One question to ask the model: prompt without media placeholders, where its media are, and the gold."""

    fields: dict  # the prediction line's id fields, in the module's ID_FIELDS order
    prompt: str
    gold: dict
    group: str  # items that share a missing-modality condition (an MMBench question, ...)
    image: Path | None = None
    image_b64: str | None = None  # MMBench carries images inline
    video: Path | None = None
    audio: Path | None = None
    soundtrack: bool = False  # audio is the video's own track (no separate file)

    @property
    def key(self) -> str:
        return key_of(self.fields.values())

    @property
    def has_audio(self) -> bool:
        return self.audio is not None or self.soundtrack

    @property
    def has_visual(self) -> bool:
        return self.image is not None or self.image_b64 is not None or self.video is not None


def key_of(values) -> str:
    return "|".join(str(v) for v in values)


def describe(fields: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())


def check_media(items: list[Item], bench: str) -> None:
    """Raise one line naming the first media file that is not there (and how many are missing): a model is about to
    read them. Scoring a predictions file needs none."""
    missing = [
        (kind, path, item)
        for item in items
        for kind, path in (("image", item.image), ("video", item.video), ("audio", item.audio))
        if path is not None and not path.is_file()
    ]
    if missing:
        kind, path, item = missing[0]
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise BenchError(f"{bench} {kind} not found: {path} ({describe(item.fields)}){more}")


def unique_phrase(text: str, phrases: list[tuple[str, str]]) -> str | None:
    """The single value whose phrase occurs in `text` as whole words, else None (no match, or several values).

    A match lying inside a longer match is ignored, so "more than ten" is not also "ten". Callers normalise case.
    """
    spans = [
        (m.start(), m.end(), value)
        for phrase, value in phrases
        if phrase
        for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)
    ]
    kept = {v for s, e, v in spans if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in spans)}
    return kept.pop() if len(kept) == 1 else None


def assign_conditions(items: list[Item], missing: str | None, rate: float, seed: int) -> dict[str, str]:
    """Condition of every group: a seeded permutation of the groups; the first round(rate * groups) lose `missing`.

    With `missing="both"` the first share loses audio and the next share (disjoint) loses the visual input.
    """
    groups = list(dict.fromkeys(item.group for item in items))
    conditions = dict.fromkeys(groups, "complete")
    if missing is None:
        return conditions
    n = round(rate * len(groups))
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    if missing in ("audio", "both"):
        conditions.update(dict.fromkeys(order[:n], "audio-missing"))
    if missing == "visual":
        conditions.update(dict.fromkeys(order[:n], "visual-missing"))
    if missing == "both":
        conditions.update(dict.fromkeys(order[n : 2 * n], "visual-missing"))
    return conditions
