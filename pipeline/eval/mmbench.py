"""MMBench from its official TSV, scored with CircularEval and rule-based answer extraction (no external judge).

TSV columns: `index, question, hint, A, B, C, D[, E], answer, category, l2-category, image` (base64; a short
all-digit value refers to the row of that index, as in the official files), other columns ignored. Options are the
non-empty letter cells, which must run A, B, ... without gaps.

CircularEval: a question with N options is asked N times; in round k letter i shows the original option
(i + k) mod N and the answer letter moves with it. The question is right only if every round is right.

Extraction from an output, stopping at the first rule that finds anything (one letter: that letter; several distinct
letters: unresolved):
  1. bare tokens: a whitespace-separated token that is exactly an option letter (upper case: "a" or the "A" in
     "Apple" never count);
  2. wrapped tokens: `A.`, `A,`, `A:`, `A)`, `(A)`, `A).`, `(A).`, or a token ending in `:A` ("Answer:A");
  3. option text: the one option whose text (case-insensitive, trailing '.' dropped) occurs as whole words; two
     option texts in one output are unresolved.
Unresolved outputs are wrong and counted: `unresolved` is their share of all rounds.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

from pipeline.eval.bench import BenchError, Item, unique_phrase

ID_FIELDS = ("index", "round")
MODALITIES = frozenset({"visual"})
POINT_METRICS: frozenset[str] = frozenset()
LETTERS = "ABCDE"
REQUIRED = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
WRAPPED = re.compile(r"\(([A-E])\)\.?|([A-E])[.,:]|([A-E])\)\.?|\S*:([A-E])")


def _cell(row: dict, column: str) -> str | None:
    value = (row.get(column) or "").strip()
    return None if value in ("", "nan", "NaN") else value


def prompt(question: str, hint: str | None, options: list[str]) -> str:
    lines = ([hint] if hint else []) + [question] + [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    return "\n".join(lines + [INSTRUCTION])


def _read(data: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)  # base64 images exceed the default 128 kB field limit
    try:
        with data.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchError(f"{data}: the MMBench TSV lacks the column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as exc:
        raise BenchError(f"{data}: cannot read the MMBench TSV ({exc.strerror or exc})") from None


def load(data: Path, media_root: Path | None = None) -> list[Item]:
    rows = _read(data)
    images = {row["index"].strip(): row["image"].strip() for row in rows}
    items = []
    for row in rows:
        index = row["index"].strip()
        where = f"{data}: index {index}"
        options = []
        for letter in LETTERS:
            text = _cell(row, letter)
            if text is None:
                break
            options.append(text)
        if len(options) < 2 or any(_cell(row, letter) for letter in LETTERS[len(options) :]):
            raise BenchError(f"{where}: options must fill A, B, ... without gaps (found {len(options)})")
        answer = _cell(row, "answer")
        if answer is None or answer not in LETTERS[: len(options)]:
            raise BenchError(f"{where}: answer {answer!r} is not one of its option letters")
        image = _cell(row, "image")
        if image is not None and image.isdigit() and len(image) <= 64:
            image = images.get(image)
        if not image:
            raise BenchError(f"{where}: no image")
        n, gold = len(options), LETTERS.index(answer)
        for k in range(n):
            rotated = [options[(i + k) % n] for i in range(n)]
            items.append(
                Item(
                    fields={"index": int(index) if index.isdigit() else index, "round": k},
                    prompt=prompt(row["question"].strip(), _cell(row, "hint"), rotated),
                    gold={
                        "answer": LETTERS[(gold - k) % n],
                        "options": rotated,
                        "category": row["category"],
                        "l2_category": row["l2-category"],
                    },
                    group=index,
                    image_b64=image,
                )
            )
    return items


def _single(found: set[str]) -> tuple[bool, str | None]:
    """(stop here, letter): a rule that found letters ends the search, resolved only if it found one."""
    return bool(found), found.pop() if len(found) == 1 else None


def extract(text: str, options: list[str]) -> str | None:
    """The option letter an output names, or None (see the module docstring for the rules and their order)."""
    letters = LETTERS[: len(options)]
    tokens = text.split()
    stop, letter = _single({t for t in tokens if t in letters})
    if stop:
        return letter
    wrapped = {next(g for g in m.groups() if g) for t in tokens if (m := WRAPPED.fullmatch(t))}
    stop, letter = _single(wrapped & set(letters))
    if stop:
        return letter
    phrases = [(option.lower().rstrip(".").strip(), letters[i]) for i, option in enumerate(options)]
    return unique_phrase(text.lower(), phrases)


def score(items: list[Item], texts: list[str]) -> dict:
    right: dict[str, bool] = {}
    info: dict[str, dict] = {}
    unresolved = 0
    for item, text in zip(items, texts):
        letter = extract(text, item.gold["options"])
        unresolved += letter is None
        right[item.group] = right.get(item.group, True) and letter == item.gold["answer"]
        info[item.group] = item.gold

    def accuracy(by: str) -> dict[str, float]:
        buckets = defaultdict(list)
        for group, ok in right.items():
            buckets[info[group][by]].append(ok)
        return {name: sum(v) / len(v) for name, v in sorted(buckets.items())}

    return {
        "overall": sum(right.values()) / max(len(right), 1),
        "category": accuracy("category"),
        "l2_category": accuracy("l2_category"),
        "unresolved": unresolved / max(len(items), 1),
    }


def headline(metrics: dict) -> float:
    """Overall accuracy, as the official tool reports it."""
    return metrics["overall"]
