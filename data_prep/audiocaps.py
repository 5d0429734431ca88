"""AudioCaps-style csv (`audiocap_id,youtube_id,start_time,caption`) with audio files, to caption Records.

Raw layout under `root`: `<split>.csv` and the clips in `audio/`, wav or flac. AudioCaps ships only the csv and
downloaders name clips differently; each of these names is found as it is: `<audiocap_id>`, `<youtube_id>`,
`<youtube_id>_<start_time>` with the start in whole seconds or as a float (`_30`, `_30.0`, `_30.000`). A row with
none of them is skipped with the names tried.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "audiocaps"
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
PROMPT = "Describe the sound briefly."
EXTENSIONS = (".wav", ".flac")


def clip_names(row: dict) -> list[str]:
    """The file names (without extension) downloaders give the clip of a csv row, most specific first."""
    cap_id, youtube_id, start = (str(row.get(k) or "").strip() for k in ("audiocap_id", "youtube_id", "start_time"))
    names = [cap_id]
    if youtube_id:
        names.append(youtube_id)
        try:
            seconds = float(start)
        except ValueError:
            seconds = None
        starts = [start] if start else []
        if seconds is not None:
            starts += [f"{seconds:g}", f"{seconds:.1f}", f"{seconds:.3f}"]
            if seconds.is_integer():
                starts.append(str(int(seconds)))
        names += [f"{youtube_id}_{s}" for s in starts]
    return list(dict.fromkeys(n for n in names if n))


def _find_clip(files: set[str], names: list[str]) -> str | None:
    return next((name + ext for name in names for ext in EXTENSIONS if name + ext in files), None)


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
    folder = root / "audio"
    files = {entry.name for entry in os.scandir(folder) if entry.is_file()} if folder.is_dir() else set()
    for n, row in enumerate(rows, start=2):
        cap_id, caption = (row.get("audiocap_id") or "").strip(), (row.get("caption") or "").strip()
        if not cap_id or not caption:
            yield Skip(f"line{n}", "malformed_row", f"{path}:{n}: empty audiocap_id or caption")
            continue
        names = clip_names(row)
        found = _find_clip(files, names)
        if found is None:
            tried = ", ".join(f"{name}{{{','.join(EXTENSIONS)}}}" for name in names)
            yield Skip(cap_id, "missing_audio", f"{path}:{n}: no clip in {folder} named {tried}")
            continue
        audio = folder / found
        yield Record(
            id=cap_id,
            source=SOURCE,
            conversations=[{"from": "human", "value": f"<audio>\n{PROMPT}"}, {"from": "gpt", "value": caption}],
            audio=audio,
            meta={"youtube_id": row.get("youtube_id"), "start_time": row.get("start_time"), "caption": caption},
        )
