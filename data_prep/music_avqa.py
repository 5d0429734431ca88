"""MUSIC-AVQA: the official annotation json (`avqa-<split>.json`) with videos and audio, to Records.

Raw layout under `root`: `avqa-<split>.json`, `videos/<video_id>.mp4`, `audio/<video_id>.wav` (optional: without
it, the mp4's audio track is used). Entries are read as `pipeline.formats.music_avqa` describes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip
from pipeline.formats.music_avqa import NoAnswer, parse_entry

SOURCE = "music_avqa"


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    path = root / f"avqa-{split}.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the MUSIC-AVQA annotation file ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: the MUSIC-AVQA annotation file must be a list of questions")
    for i, entry in enumerate(entries):
        qid = str(entry.get("question_id", f"#{i}")) if isinstance(entry, dict) else f"#{i}"
        if not isinstance(entry, dict) or entry.get("question_deleted", 0):
            if isinstance(entry, dict):
                yield Skip(qid, "question_deleted")
            else:
                yield Skip(qid, "malformed_entry", f"{path}: entry {i} is not an object")
            continue
        video_id = entry.get("video_id")
        if not isinstance(video_id, (str, int)) or isinstance(video_id, bool) or not str(video_id):
            yield Skip(qid, "malformed_entry", f"{path}: question {qid}: 'video_id' is {video_id!r}")
            continue
        video_id = str(video_id)
        try:
            question, qtype, answer = parse_entry(entry)
        except LookupError as exc:
            yield Skip(qid, "unknown_question_type", f"{path}: question {qid}: {exc}")
            continue
        except NoAnswer as exc:
            yield Skip(qid, "no_answer", f"{path}: question {qid}: {exc}")
            continue
        except ValueError as exc:
            yield Skip(qid, "malformed_entry", f"{path}: question {qid}: {exc}")
            continue
        audio = root / "audio" / f"{video_id}.wav"
        yield Record(
            id=qid,
            source=SOURCE,
            conversations=[
                {"from": "human", "value": f"<video>\n<audio>\n{question}"},
                {"from": "gpt", "value": answer},
            ],
            video=root / "videos" / f"{video_id}.mp4",
            audio=audio if audio.exists() else None,
            audio_from_video=not audio.exists(),
            meta={"video_id": video_id, "question_id": qid, "type": qtype, "answer": answer, "question": question},
        )
