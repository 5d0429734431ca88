"""AVE event localisation: the test split file (`testSet.txt`, lines as in `Annotations.txt`) and the videos.

`--data` is the AVE folder (its `testSet.txt` is read) or one split file; videos are `AVE/<VideoID>.mp4` under
`--media-root` (default: that folder); the audio is the video's soundtrack. The prompt is the training question
(`pipeline.formats.ave.QUESTION`), whose target reads "Church bell, from second 2 to second 6.".

Parsing: the event is the one class of the 28 whose full name (case-insensitive, whole words) occurs in the output;
start and end are the first two integers in it and must satisfy 0 <= start < end <= 10. Each of the 10 one-second
segments is labelled with the event for seconds in [start, end) and background otherwise, for the gold and the
prediction alike; `segment_accuracy` is the share of matching segments over all test videos. An unparsable output
(no class, several classes, fewer than two integers, a bad range) gets all 10 segments wrong, background ones
included, and a wrong event; `unparsable` is its share of videos. `event_accuracy`: the share naming the gold class.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.eval.bench import BenchError, Item, unique_phrase
from pipeline.formats.ave import CATEGORIES, HEADER, QUESTION, SPLIT_FILES, parse_line

ID_FIELDS = ("video_id",)
MODALITIES = frozenset({"visual", "audio"})
POINT_METRICS: frozenset[str] = frozenset()
SEGMENTS = 10
BACKGROUND = "background"


def load(data: Path, media_root: Path | None = None) -> list[Item]:
    split_file = data / SPLIT_FILES["test"] if data.is_dir() else data
    media_root = media_root or split_file.parent
    try:
        lines = split_file.read_text().splitlines()
    except OSError as exc:
        raise BenchError(f"{split_file}: cannot read the AVE split file ({exc.strerror or exc})") from None
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(HEADER):
            continue
        try:
            category, video_id, start, end = parse_line(line)
        except (LookupError, ValueError) as exc:
            raise BenchError(f"{split_file}:{n}: {exc}") from None
        video = media_root / "AVE" / f"{video_id}.mp4"
        items.append(
            Item(
                fields={"video_id": video_id},
                prompt=QUESTION,
                gold={"category": category, "start": start, "end": end},
                group=video_id,
                video=video,
                soundtrack=True,
            )
        )
    return items


def parse(text: str) -> tuple[str, int, int] | None:
    """(class, start, end) named by an output, or None when unparsable (see the module docstring)."""
    category = unique_phrase(text.lower(), [(c.lower(), c) for c in CATEGORIES])
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    if category is None or len(numbers) < 2 or not 0 <= numbers[0] < numbers[1] <= SEGMENTS:
        return None
    return category, numbers[0], numbers[1]


def segment_labels(category: str, start: int, end: int) -> list[str]:
    return [category if start <= s < end else BACKGROUND for s in range(SEGMENTS)]


def score(items: list[Item], texts: list[str]) -> dict:
    segments = events = unparsable = 0
    for item, text in zip(items, texts):
        parsed = parse(text)
        if parsed is None:
            unparsable += 1
            continue
        gold = segment_labels(item.gold["category"], item.gold["start"], item.gold["end"])
        segments += sum(p == g for p, g in zip(segment_labels(*parsed), gold))
        events += parsed[0] == item.gold["category"]
    n = max(len(items), 1)
    return {"segment_accuracy": segments / (SEGMENTS * n), "event_accuracy": events / n, "unparsable": unparsable / n}


def headline(metrics: dict) -> float:
    """Segment accuracy: the share of one-second segments labelled with the right event (AVE's metric)."""
    return metrics["segment_accuracy"]
