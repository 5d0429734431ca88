"""AVE (Audio-Visual Event localisation): `Annotations.txt` + split files to Records.

Raw layout under `root`: `Annotations.txt` and `trainSet.txt` / `valSet.txt` / `testSet.txt`, lines in the format
of `pipeline.formats.ave`; videos `AVE/<VideoID>.mp4` (10 s; the audio is the video's soundtrack). The target names
the event and its time range in whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip
from pipeline.formats.ave import HEADER, QUESTION, SPLIT_FILES, answer_text, parse_line

SOURCE = "ave"


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
