"""Media-blind baselines of a test file: what a model that never looks at the media reaches, scored by the benchmark.

A score means something only above these. Each is computed from the test file's own questions and scored by the
benchmark's own `score`, so it uses the same parsing and metric as the model's number:
  MUSIC-AVQA  `majority`: the file's most frequent answer for every question; `type_prior`: the most frequent answer
              of each question's type (the best a text-only model can do per type).
  POPE        `one_answer_accuracy`: the better of always "yes" and always "no"; `one_answer_f1`: always "yes" (the
              one-answer F1 that is not zero). Means over the splits present, as the headline.
  MMBench     `chance`: the expected CircularEval score of a uniformly random letter (a question of N options is
              right with probability (1/N)^N); `best_letter`: the best score of answering one fixed letter throughout;
              `best_option_text`: the best score of answering, per category, one fixed option text throughout (the
              category's most frequent answer: CircularEval's rotations do not move an answer given as text).
"""

from __future__ import annotations

from collections import Counter

from pipeline.eval import mmbench, music_avqa, pope
from pipeline.eval.bench import Item


def _music_avqa(items: list[Item]) -> dict[str, float]:
    overall = Counter(item.gold["answer"] for item in items).most_common(1)[0][0]
    per_type: dict[str, Counter] = {}
    for item in items:
        per_type.setdefault(item.gold["subtype"], Counter())[item.gold["answer"]] += 1
    prior = [per_type[item.gold["subtype"]].most_common(1)[0][0] for item in items]
    return {
        "majority": music_avqa.score(items, [overall] * len(items))["overall"],
        "type_prior": music_avqa.score(items, prior)["overall"],
    }


def _mean(metrics: dict[str, dict], key: str) -> float:
    return sum(split[key] for split in metrics.values()) / len(metrics)


def _pope(items: list[Item]) -> dict[str, float]:
    yes, no = (pope.score(items, [answer] * len(items)) for answer in ("yes", "no"))
    return {
        "one_answer_accuracy": max(_mean(yes, "accuracy"), _mean(no, "accuracy")),
        "one_answer_f1": _mean(yes, "f1"),
    }


def _mmbench(items: list[Item]) -> dict[str, float]:
    options = {item.group: len(item.gold["options"]) for item in items}
    letters = sorted({letter for item in items for letter in mmbench.LETTERS[: len(item.gold["options"])]})
    return {
        "chance": sum((1 / n) ** n for n in options.values()) / len(options),
        "best_letter": max(mmbench.score(items, [letter] * len(items))["overall"] for letter in letters),
        "best_option_text": _best_option_text(items),
    }


def _best_option_text(items: list[Item]) -> float:
    by_category: dict[str, list[Item]] = {}
    for item in items:
        by_category.setdefault(item.gold["category"], []).append(item)
    right = 0.0
    for group in by_category.values():
        texts = sorted({option for item in group for option in item.gold["options"]})
        questions = len({item.group for item in group})
        right += questions * max(mmbench.score(group, [text] * len(group))["overall"] for text in texts)
    return right / len({item.group for item in items})


BASELINES = {"music_avqa": _music_avqa, "pope": _pope, "mmbench": _mmbench}


def baselines(bench: str, items: list[Item]) -> dict[str, float]:
    """The named media-blind baselines of `bench` on `items` (fractions, as the benchmark's metrics)."""
    return BASELINES[bench](items)
