"""MME: the official folder layout, scored as the official `eval_tool/calculation.py` does.

`--data` is the release folder (`--media-root`, if given, holds the images in the same layout). Each subtask folder
is named after its subtask and either has `images/` and `questions_answers_YN/<image stem>.txt`, or (the flat
variant) images with same-stem `.txt` files side by side. A txt line is `question\\tanswer` (the image is the txt's
stem) or `image\\tquestion\\tanswer`; answers are yes/no. `--data` may instead be a folder of `<subtask>.txt` lists
(`image\\tquestion\\tanswer` lines, as `eval_tool/Your_Results`) with the release folder as `--media-root`. Folders
that are not MME subtasks (`eval_tool`, ...) are skipped. Prediction ids are `<subtask>/<image>/<item number>`.

Parsing, as the official tool: lower-case the output (and strip it); exactly "yes" or "no" is that answer,
otherwise "yes" in the first 4 characters is yes, else "no" in them is no, else "other" (wrong). Per subtask: acc
(questions right), acc+ (images with every question right), score = 100 * (acc + acc+) in points (0-200, the
official unit; acc and acc+ stay fractions); `perception` (10 subtasks, max 2000) and `cognition` (4 subtasks, max
800) sum the subtask scores present.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipeline.eval.bench import BenchError, Item

ID_FIELDS = ("question_id",)
MODALITIES = frozenset({"visual"})
POINT_METRICS = frozenset({"score", "perception", "cognition"})  # official points, not fractions
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def _sources(data: Path, media_root: Path, task: str) -> list[tuple[Path, Path]]:
    """(question txt, image folder) pairs of one subtask, in file order."""
    folder = data / task
    if not folder.is_dir():  # the eval_tool list: <task>.txt beside, images in the release layout under media_root
        images = media_root / task / "images"
        return [(data / f"{task}.txt", images if images.is_dir() else media_root / task)]
    nested = folder / "questions_answers_YN"
    if nested.is_dir():
        return [(txt, media_root / task / "images") for txt in sorted(nested.glob("*.txt"))]
    return [(txt, media_root / task) for txt in sorted(folder.glob("*.txt"))]


def _image_for(stem: str, folder: Path) -> str:
    found = [stem + ext for ext in IMAGE_EXTENSIONS if (folder / (stem + ext)).is_file()]
    return found[0] if found else stem + IMAGE_EXTENSIONS[0]


def load(data: Path, media_root: Path | None = None) -> list[Item]:
    tasks = [t for t in PERCEPTION + COGNITION if (data / t).is_dir() or (data / f"{t}.txt").is_file()]
    if not tasks:
        raise BenchError(f"{data}: no MME subtask folder or list ({', '.join(PERCEPTION + COGNITION)})")
    items: list[Item] = []
    for task in tasks:
        for txt, image_dir in _sources(data, media_root or data, task):
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) == 2:
                    image, (question, answer) = _image_for(txt.stem, image_dir), parts
                elif len(parts) == 3:
                    image, question, answer = parts
                else:
                    raise BenchError(f"{txt}:{n}: expected 'question<TAB>answer' or 'image<TAB>question<TAB>answer'")
                if answer.strip().lower() not in ("yes", "no"):
                    raise BenchError(f"{txt}:{n}: answer must be yes or no, got {answer!r}")
                items.append(
                    Item(
                        fields={"question_id": f"{task}/{image}/{len(items)}"},
                        prompt=question.strip(),
                        gold={"task": task, "answer": answer.strip().lower()},
                        group=f"{task}/{image}",
                        image=image_dir / image,
                    )
                )
    return items


def parse(text: str) -> str:
    """yes / no / other, as the official calculation reads an answer."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def score(items: list[Item], texts: list[str]) -> dict:
    right: dict[str, list[bool]] = defaultdict(list)
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item, text in zip(items, texts):
        ok = parse(text) == item.gold["answer"]
        right[item.gold["task"]].append(ok)
        images[item.gold["task"]][item.group].append(ok)
    subtasks = {}
    for task in [t for t in PERCEPTION + COGNITION if t in right]:
        acc = sum(right[task]) / len(right[task])
        acc_plus = sum(all(v) for v in images[task].values()) / len(images[task])
        subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus)}
    return {
        "subtask": subtasks,
        "perception": sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks),
        "cognition": sum(subtasks[t]["score"] for t in COGNITION if t in subtasks),
    }


def headline(metrics: dict) -> float:
    """Perception score (points, out of 2000), the number MME papers lead with."""
    return metrics["perception"]
