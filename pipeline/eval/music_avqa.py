"""MUSIC-AVQA: the official annotation json (`avqa-test.json`), questions filled from `templ_values` by the converter.

Media under `--media-root` (default: the json's folder): `videos/<video_id>.mp4` and, when present,
`audio/<video_id>.wav` (else the video's soundtrack), the layout `data_prep.music_avqa` reads. Deleted questions
(`question_deleted`) are not asked, as in the official test.

Answer normalisation: the content of an `<answer>...</answer>` span if there is one; lower case; punctuation,
underscores included, becomes a space (so `acoustic_guitar` is "acoustic guitar"); the numbers 0-10 written as
digits become words ("2" is "two"). The normalised output resolves to the one answer of the vocabulary (the official
42 answers united with the file's) that it contains as whole words, a match inside a longer one ignored ("more than
ten" is not also "ten"). It is right if that answer is the gold; an output that resolves to no answer or to several
("yes, two") is unparsable: wrong, and counted in `unparsable`.
"""

from __future__ import annotations

import json
import re
import string
from collections import defaultdict
from pathlib import Path

from pipeline.eval.bench import BenchError, Item, unique_phrase
from pipeline.formats.music_avqa import parse_entry

ID_FIELDS = ("question_id",)
MODALITIES = frozenset({"visual", "audio"})
POINT_METRICS: frozenset[str] = frozenset()
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
OFFICIAL_ANSWERS = (
    "accordion",
    "acoustic_guitar",
    "bagpipe",
    "banjo",
    "bassoon",
    "cello",
    "clarinet",
    "congas",
    "drum",
    "electric_bass",
    "erhu",
    "flute",
    "guzheng",
    "piano",
    "pipa",
    "saxophone",
    "suona",
    "trumpet",
    "tuba",
    "ukulele",
    "violin",
    "xylophone",
    "indoor",
    "outdoor",
    "left",
    "middle",
    "right",
    "simultaneously",
    "yes",
    "no",
    "more than ten",
    *NUMBERS,
)
GROUPS = ("Audio", "Visual", "Audio-Visual")
SUBTYPES = (
    "Audio/Counting",
    "Audio/Comparative",
    "Visual/Counting",
    "Visual/Location",
    "Audio-Visual/Existential",
    "Audio-Visual/Counting",
    "Audio-Visual/Location",
    "Audio-Visual/Comparative",
    "Audio-Visual/Temporal",
)
ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalise(text: str) -> str:
    span = ANSWER_SPAN.search(text)
    words = (span.group(1) if span else text).lower().translate(PUNCTUATION).split()
    return " ".join(NUMBERS[int(w)] if w.isdigit() and int(w) <= 10 else w for w in words)


def resolve(text: str, vocabulary: list[str]) -> str | None:
    """The vocabulary answer an output names, or None (unparsable)."""
    return unique_phrase(normalise(text), [(normalise(a), a) for a in vocabulary])


def load(data: Path, media_root: Path | None = None) -> list[Item]:
    media_root = media_root or data.parent
    try:
        entries = json.loads(data.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{data}: cannot read the MUSIC-AVQA annotation json ({exc})") from None
    if not isinstance(entries, list):
        raise BenchError(f"{data}: the MUSIC-AVQA annotation json must be a list of questions")
    items = []
    for i, entry in enumerate(entries):
        qid = entry.get("question_id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
        if isinstance(entry, dict) and entry.get("question_deleted", 0):
            continue
        try:
            question, (group, kind), answer = parse_entry(entry)
            video_id = str(entry["video_id"])
        except (LookupError, ValueError, TypeError, AttributeError) as exc:
            raise BenchError(f"{data}: question_id {qid}: {exc}") from None
        audio = media_root / "audio" / f"{video_id}.wav"
        video = media_root / "videos" / f"{video_id}.mp4"
        items.append(
            Item(
                fields={"question_id": qid},
                prompt=question,
                gold={"answer": answer, "group": group, "subtype": f"{group}/{kind}"},
                group=str(qid),
                video=video,
                audio=audio if audio.is_file() else None,
                soundtrack=not audio.is_file(),
            )
        )
    return items


def score(items: list[Item], texts: list[str]) -> dict:
    vocabulary = sorted(set(OFFICIAL_ANSWERS) | {item.gold["answer"] for item in items})
    by_group, by_subtype = defaultdict(list), defaultdict(list)
    unparsable, right = 0, []
    for item, text in zip(items, texts):
        answer = resolve(text, vocabulary)
        unparsable += answer is None
        ok = answer is not None and normalise(answer) == normalise(item.gold["answer"])
        right.append(ok)
        by_group[item.gold["group"]].append(ok)
        by_subtype[item.gold["subtype"]].append(ok)
    n = max(len(items), 1)
    return {
        "overall": sum(right) / n,
        "group": {g: sum(by_group[g]) / len(by_group[g]) for g in GROUPS if by_group[g]},
        "subtype": {s: sum(by_subtype[s]) / len(by_subtype[s]) for s in SUBTYPES if by_subtype[s]},
        "unparsable": unparsable / n,
    }


def headline(metrics: dict) -> float:
    """Overall answer accuracy."""
    return metrics["overall"]
