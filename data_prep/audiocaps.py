"""AudioCaps-style csv (`audiocap_id,youtube_id,start_time,caption`) with audio files, to caption Records.

Raw layout under `root`: `<split>.csv` and `audio/<audiocap_id>.wav` (or `.flac`). AudioCaps ships only the csv;
downloaders name clips differently, so rename them to the audiocap_id.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "audiocaps"
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
PROMPT = "Describe the sound briefly."


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    path = root / f"{split}.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            header = tuple(rows[0].keys()) if rows else ()
    except (OSError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the AudioCaps csv ({exc})") from None
    if rows and not set(COLUMNS) <= set(header):
        raise ValueError(f"{path}: header must contain {', '.join(COLUMNS)}, got {', '.join(map(str, header))}")
    for n, row in enumerate(rows, start=2):
        cap_id, caption = (row.get("audiocap_id") or "").strip(), (row.get("caption") or "").strip()
        if not cap_id or not caption:
            yield Skip(f"line{n}", "malformed_row", f"{path}:{n}: empty audiocap_id or caption")
            continue
        audio = root / "audio" / f"{cap_id}.wav"
        if not audio.exists() and (root / "audio" / f"{cap_id}.flac").exists():
            audio = root / "audio" / f"{cap_id}.flac"
        yield Record(
            id=cap_id,
            source=SOURCE,
            conversations=[{"from": "human", "value": f"<audio>\n{PROMPT}"}, {"from": "gpt", "value": caption}],
            audio=audio,
            meta={"youtube_id": row.get("youtube_id"), "start_time": row.get("start_time"), "caption": caption},
        )
