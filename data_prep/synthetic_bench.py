"""Small benchmark files in the official MMBench, POPE and MME formats, with real images, for tests and demos.

`python -m data_prep.synthetic_bench --out DIR [--n N] [--seed S]` writes DIR/mmbench.tsv (base64 images),
DIR/pope/coco_pope_{random,adversarial}.json with DIR/pope/images/, and DIR/mme/ (the flat `color` and
`code_reasoning` subtasks, and `artwork` with `images/` + `questions_answers_YN/`). The images are the coloured
squares of `data_prep.render`, and every answer follows from them (colour, side). MUSIC-AVQA and AVE files come from
`data_prep.synthetic`.
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

from data_prep import render
from data_prep.synthetic import SIDES, balanced

COLOURS = tuple(render.COLOURS)


def _image(colour: str, side: str) -> np.ndarray:
    return render.frame(colour, side, 22)


def _b64_png(img: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def mmbench(out: Path, n: int, rng: np.random.Generator) -> Path:
    """n questions (colour with 4 options; side with 2), the official TSV columns plus an ignored `source`."""
    path = out / "mmbench.tsv"
    colours, sides = balanced(COLOURS, n, rng), balanced(SIDES, n, rng)
    rows = []
    for i in range(n):
        image = _b64_png(_image(colours[i], sides[i]))
        if i % 2:
            options, answer, category = list(SIDES), sides[i], "spatial"
            question, hint = "On which side is the square?", ""
        else:
            options = [COLOURS[j] for j in rng.permutation(len(COLOURS))]
            answer, category, question, hint = colours[i], "colour", "What colour is the square?", "Look at the square."
        rows.append(
            {
                "index": 1000 + i,
                "question": question,
                "hint": hint,
                "answer": "ABCD"[options.index(answer)],
                "category": category,
                "l2-category": "perception",
                "image": image,
                "source": "synthetic",
                **dict(zip("ABCD", options)),
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
    """Two splits of n questions "Is there a <colour> square in the image?" over n//2 images, half yes."""
    root = out / "pope"
    images = [(f"COCO_val2014_{i:012d}.jpg", COLOURS[i % len(COLOURS)], SIDES[i % 2]) for i in range(max(1, n // 2))]
    for name, colour, side in images:
        render.write_jpg(root / "images" / name, _image(colour, side))
    for split in ("random", "adversarial"):
        lines = []
        for qid, yes in enumerate(balanced((True, False), n, rng), start=1):
            name, colour, _ = images[qid % len(images)]
            asked = colour if yes else COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
            lines.append(
                {
                    "question_id": qid,
                    "image": name,
                    "text": f"Is there a {asked} square in the image?",
                    "label": "yes" if yes else "no",
                }
            )
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
