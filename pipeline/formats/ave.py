"""AVE's official annotation format: the 28 event categories, the split files and their lines, and the question.

Lines (after an optional header) read `Category&VideoID&Quality&StartTime&EndTime`; a video is 10 s, one-second
segments 0-9. Shared by the converter (`data_prep.ave`) and the benchmark (`pipeline.eval.ave`), so training targets
and scoring read the same format.
"""

from __future__ import annotations

CATEGORIES = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats",
    "Accordion",
    "Mandolin",
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
