"""POPE: the official `coco_pope_{random,popular,adversarial}.json` question files and an image folder.

`--data` is one question file or a folder holding several (each is a split, named after the file: random, popular,
adversarial); images are looked up under `--media-root` (default: the question files' folder). Every line is a json
object `question_id, image, text, label` (yes/no). Prediction lines carry `split` too, since question ids repeat across
splits; a predictions file without it is accepted when only one split is evaluated.

Parsing, as the POPE reference script: keep the text before the first '.', remove commas, split on single spaces;
if a word is "no" or "not" (any case) the answer is no, otherwise yes. So "no." and "Not sure" are no, "Nothing" is
yes, and, like the reference, "No\\nThere is..." is yes (a newline is not a space). Metrics per split with "yes" as
the positive class: accuracy, precision, recall, f1 and yes_ratio (predicted yes / N); precision is 0 when nothing is
predicted yes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pipeline.eval.bench import BenchError, Item

ID_FIELDS = ("split", "question_id")
MODALITIES = frozenset({"visual"})
POINT_METRICS: frozenset[str] = frozenset()
INSTRUCTION = "\nAnswer the question using a single word or phrase."
PREFIX = "coco_pope_"


def _files(data: Path) -> list[Path]:
    if data.is_file():
        return [data]
    files = sorted(data.glob(f"{PREFIX}*.json")) if data.is_dir() else []
    if not files:
        raise BenchError(f"{data}: no POPE question file ({PREFIX}*.json)")
    return files


def load(data: Path, media_root: Path | None = None) -> list[Item]:
    files = _files(data)
    media_root = media_root or files[0].parent
    items = []
    for path in files:
        split = path.stem.removeprefix(PREFIX)
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                qid, image, text, label = (entry[k] for k in ("question_id", "image", "text", "label"))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise BenchError(f"{path}:{n}: not a POPE line with question_id, image, text, label ({exc})") from None
            if not isinstance(label, str) or label.lower() not in ("yes", "no"):
                raise BenchError(f"{path}:{n}: label must be yes or no, got {label!r}")
            if not isinstance(text, str) or not isinstance(image, str) or not image:
                raise BenchError(f"{path}:{n}: text and image must be strings, got {text!r} and {image!r}")
            fields = {"split": split, "question_id": qid}
            items.append(
                Item(
                    fields=fields,
                    prompt=text + INSTRUCTION,
                    gold={"label": label.lower()},
                    group=f"{split}|{qid}",
                    image=media_root / image,
                )
            )
    return items


def parse(text: str) -> str:
    """yes/no as the POPE reference reads an answer (see the module docstring)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w.lower() in ("no", "not") for w in words) else "yes"


def binary_metrics(pred: list[str], gold: list[str]) -> dict[str, float]:
    tp = sum(p == g == "yes" for p, g in zip(pred, gold))
    tn = sum(p == g == "no" for p, g in zip(pred, gold))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, gold))
    fn = sum(p == "no" and g == "yes" for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = max(len(gold), 1)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1, "yes_ratio": (tp + fp) / n}


def score(items: list[Item], texts: list[str]) -> dict:
    splits: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for item, text in zip(items, texts):
        pred, gold = splits[item.fields["split"]]
        pred.append(parse(text))
        gold.append(item.gold["label"])
    return {split: binary_metrics(pred, gold) for split, (pred, gold) in splits.items()}


def headline(metrics: dict) -> float:
    """Accuracy averaged over the splits present (random, popular, adversarial)."""
    return sum(split["accuracy"] for split in metrics.values()) / len(metrics)
