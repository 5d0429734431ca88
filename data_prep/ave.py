"""AVE (Audio-Visual Event localisation): `Annotations.txt` + split files to Records.

Raw layout under `root`: `Annotations.txt` and `trainSet.txt` / `valSet.txt` / `testSet.txt`, each lines (after an optional header) `Category&VideoID&Quality&StartTime&EndTime`; videos `AVE/<VideoID>.mp4` (10 s, one-second segments 0-9; the
audio is the video's soundtrack). The target names the event and its time range in whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "ave"
CATEGORIES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats", "Accordion", "Mandolin",
)
HEADER = "Category&VideoID&"
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
QUESTION = "What event happens in this video, and during which seconds?"


def answer_text(category: str, start: int, end: int) -> str:
    """The target: the event and its range of one-second segments, e.g. 'Church bell, from second 2 to second 6.'"""
    return f"{category}, from second {start} to second {end}."


def parse_line(line: str) -> tuple[str, str, int, int]:
    """(category, video id, start, end) of one annotation line; ValueError/LookupError say what is wrong."""
    parts = line.rstrip("\n").split("&")
    if len(parts) != 5:
        raise ValueError(f"expected 5 '&'-separated fields, got {len(parts)}")
    category, video_id, _quality, start, end = parts
    if category not in CATEGORIES:
        raise LookupError(f"unknown event category {category!r}")
    try:
        start_s, end_s = int(start), int(end)
    except ValueError:
        raise ValueError(f"StartTime/EndTime must be integers, got {start!r}/{end!r}") from None
    if not 0 <= start_s < end_s <= 10:
        raise ValueError(f"time range {start_s}-{end_s} is outside 0-10 s or empty")
    return category, video_id, start_s, end_s


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    if split not in SPLIT_FILES:
        raise ValueError(f"AVE split must be one of {', '.join(SPLIT_FILES)}, got {split!r}")
    path = root / SPLIT_FILES[split]
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the AVE split file ({exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(HEADER):
            continue
        try:
            category, video_id, start, end = parse_line(line)
        except LookupError as exc:
            yield Skip(f"line{n}", "unknown_category", f"{path}:{n}: {exc}")
            continue
        except ValueError as exc:
            yield Skip(f"line{n}", "malformed_line", f"{path}:{n}: {exc}")
            continue
        yield Record(
            id=video_id,
            source=SOURCE,
            conversations=[
                {"from": "human", "value": f"<video>\n<audio>\n{QUESTION}"},
                {"from": "gpt", "value": answer_text(category, start, end)},
            ],
            video=root / "AVE" / f"{video_id}.mp4",
            audio_from_video=True,
            meta={"video_id": video_id, "category": category, "start": start, "end": end},
        )
