"""MUSIC-AVQA: the official annotation json (`avqa-<split>.json`) with videos and audio, to Records.

Raw layout under `root`: `avqa-<split>.json`, `videos/<video_id>.mp4`, `audio/<video_id>.wav` (optional: without
it, the mp4's audio track is used). Entries carry `type` as a JSON string such as '["Audio", "Counting"]', the
question with placeholders (`<Object>`, `<LR>`, `<FL>`, `<LL>`, `<TH>`, `<BA>`, `<LRer>`) filled in order from
`templ_values` (itself a JSON list string), and the answer under the official misspelled key `anser`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "music_avqa"
QUESTION_TYPES = {
    ("Audio", "Counting"),
    ("Audio", "Comparative"),
    ("Visual", "Counting"),
    ("Visual", "Location"),
    ("Audio-Visual", "Existential"),
    ("Audio-Visual", "Counting"),
    ("Audio-Visual", "Location"),
    ("Audio-Visual", "Comparative"),
    ("Audio-Visual", "Temporal"),
}
PLACEHOLDER = re.compile(r"<(Object|LR|FL|LL|TH|BA|LRer)>")


def fill_template(question: str, values: list[str]) -> str:
    """Replace the placeholders left to right with `values`; the counts must match (ValueError otherwise)."""
    found = PLACEHOLDER.findall(question)
    if len(found) != len(values):
        raise ValueError(f"{len(found)} placeholders but {len(values)} templ_values")
    it = iter(values)
    filled = PLACEHOLDER.sub(lambda _: str(next(it)), question)
    return " ".join(filled.replace("\uff1f", "?").split())


def parse_entry(entry: dict) -> tuple[str, list[str], str]:
    """(filled question, [modality, kind] type, answer) of one official entry; ValueError names the bad field."""
    try:
        qtype = json.loads(entry["type"])
        values = json.loads(entry["templ_values"])
        question, answer = entry["question_content"], entry["anser"]
    except KeyError as exc:
        raise ValueError(f"missing field {exc}") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"'type' or 'templ_values' is not a JSON string ({exc})") from None
    if not isinstance(qtype, list) or tuple(qtype) not in QUESTION_TYPES:
        raise LookupError(f"unknown question type {entry['type']}")
    return fill_template(question, values), qtype, str(answer)


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    path = root / f"avqa-{split}.json"
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the MUSIC-AVQA annotation file ({exc})") from None
    for i, entry in enumerate(entries):
        qid = str(entry.get("question_id", f"#{i}")) if isinstance(entry, dict) else f"#{i}"
        if not isinstance(entry, dict) or entry.get("question_deleted", 0):
            if isinstance(entry, dict):
                yield Skip(qid, "question_deleted")
            else:
                yield Skip(qid, "malformed_entry", f"{path}: entry {i} is not an object")
            continue
        try:
            question, qtype, answer = parse_entry(entry)
            video_id = str(entry["video_id"])
        except LookupError as exc:
            yield Skip(qid, "unknown_question_type", f"{path}: question {qid}: {exc}")
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
            meta={"video_id": video_id, "question_id": qid, "type": qtype, "answer": answer,
                  "question": question},
        )
