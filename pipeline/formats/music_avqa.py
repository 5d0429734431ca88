"""MUSIC-AVQA's official annotation format: question types, templated questions, and one entry's fields.

Entries carry `type` as a JSON string such as '["Audio", "Counting"]', the question with placeholders (`<Object>`,
`<LR>`, `<FL>`, `<LL>`, `<TH>`, `<BA>`, `<LRer>`) filled in order from `templ_values` (itself a JSON list string), and
the answer under the official misspelled key `anser`. Shared by the converter and the benchmark.
"""

from __future__ import annotations

import json
import re

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


class NoAnswer(ValueError):
    """An entry without a usable gold answer (`anser` missing, null or empty): never trained on or scored as "None"."""


def parse_entry(entry: dict) -> tuple[str, list[str], str]:
    """(filled question, [modality, kind] type, answer) of one official entry; ValueError names the bad field
    (NoAnswer when it is the answer), LookupError an unknown question type."""
    answer = entry.get("anser")
    if isinstance(answer, bool) or not isinstance(answer, (str, int)) or not str(answer).strip():
        raise NoAnswer(f"'anser' (the gold answer) is {answer!r}; an answer string is needed")
    try:
        qtype = json.loads(entry["type"])
        values = json.loads(entry["templ_values"])
        question = entry["question_content"]
    except KeyError as exc:
        raise ValueError(f"missing field {exc}") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"'type' or 'templ_values' is not a JSON string ({exc})") from None
    if not isinstance(qtype, list) or not all(isinstance(t, str) for t in qtype) or tuple(qtype) not in QUESTION_TYPES:
        raise LookupError(f"unknown question type {entry['type']}")
    if not isinstance(question, str) or not isinstance(values, list):
        raise ValueError("'question_content' must be a string and 'templ_values' a JSON list")
    return fill_template(question, values), qtype, str(answer).strip()
