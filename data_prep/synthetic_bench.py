"""Small benchmark files in the official MMBench, POPE and MME formats, with real images, for tests and demos.

`python -m data_prep.synthetic_bench --out DIR [--n N] [--seed S]` writes DIR/mmbench.tsv (base64 images),
DIR/pope/coco_pope_{random,adversarial}.json with DIR/pope/images/, and DIR/mme/ (the flat `color` and
`code_reasoning` subtasks, and `artwork` with `images/` + `questions_answers_YN/`). Every answer follows from the
image: MMBench and POPE ask about scenes of coloured shapes (`data_prep.scenes`, the kind of content the demo's
image instruction data has, other images and draws), MME about the colour of a square. MUSIC-AVQA and AVE files come
from `data_prep.synthetic`.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep import render, scenes
from data_prep.balance import balanced
from data_prep.synthetic import SIDES

COLOURS = tuple(render.COLOURS)


def _image(colour: str, side: str) -> np.ndarray:
    return render.frame(colour, side, 22)


def _b64_png(img: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def mmbench(out: Path, n: int, rng: np.random.Generator) -> Path:
    """n four-option questions about scenes of shapes (`data_prep.scenes`: which colour where, where a colour is, how
    many), the official TSV columns plus an ignored `source`."""
    path = out / "mmbench.tsv"
    rows = []
    for i, (scene, question) in enumerate(scenes.draw(scenes.CHOICE_KINDS, n, rng)):
        rows.append(
            {
                "index": 1000 + i,
                "question": question.text,
                "hint": "",
                "answer": question.letter(),
                "category": question.kind,
                "l2-category": "perception",
                "image": _b64_png(scene.image()),
                "source": "synthetic",
                **dict(zip("ABCD", question.options)),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f,
            ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image", "source"],
            delimiter="\t",
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def pope(out: Path, n: int, rng: np.random.Generator) -> Path:
    """Two splits (named as POPE's; here they differ only in their draws) of n questions "Is there a <colour> shape
    in the image?" about scenes of shapes, one image each, half yes."""
    root = out / "pope"
    for s, split in enumerate(("random", "adversarial")):
        lines = []
        for qid, (scene, question) in enumerate(scenes.draw(("exists",), n, rng), start=1):
            name = f"COCO_val2014_{s * 100000 + qid:012d}.jpg"
            render.write_jpg(root / "images" / name, scene.image())
            lines.append({"question_id": qid, "image": name, "text": question.text, "label": question.answer})
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def mme(out: Path, n: int, rng: np.random.Generator) -> Path:
    """n images per subtask, two questions each (one yes, one no), in the official nested and flat layouts."""
    root = out / "mme"
    for task in ("color", "artwork", "code_reasoning"):
        nested = task == "artwork"
        for i, (colour, side) in enumerate(zip(balanced(COLOURS, n, rng), balanced(SIDES, n, rng))):
            stem = f"{task}{i:03d}"
            other = COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
            render.write_jpg(root / task / ("images" if nested else "") / f"{stem}.jpg", _image(colour, side))
            qa = [
                f"Is the square {colour}? Please answer yes or no.\tYes",
                f"Is the square {other}? Please answer yes or no.\tNo",
            ]
            txt = root / task / ("questions_answers_YN" if nested else "") / f"{stem}.txt"
            txt.parent.mkdir(parents=True, exist_ok=True)
            txt.write_text("\n".join(qa) + "\n")
    return root


WRITERS = {"mmbench": mmbench, "pope": pope, "mme": mme}


def generate(out: Path, n: int = 8, seed: int = 0) -> dict[str, Path]:
    """Write every benchmark under `out`; returns {benchmark: --data path}. Deterministic for a given (n, seed)."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    return {name: write(out, n, np.random.default_rng([seed, i])) for i, (name, write) in enumerate(WRITERS.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--n", type=int, default=8, help="questions (MMBench, POPE per split) or images (MME)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        written = generate(args.out, args.n, args.seed)
    except (ValueError, OSError) as exc:  # --n too small; a read-only or full --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
