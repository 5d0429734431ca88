"""Synthetic image questions: scenes of coloured shapes, asked in POPE's and MMBench's own prompt formats.

A scene holds one to four shapes (distinct shapes and colours, one per quadrant). Each question is about one scene
and only its image answers it: "Is there a <shape> in the image?" (POPE's yes/no object existence), and four
multiple-choice kinds (MMBench's prompt, the answer an option letter): the colour of a shape, which shape has a
colour, where a shape is, how many shapes there are. `draw` balances every answer (and the shape a yes/no question
names), and options are shuffled, so the question text alone cannot answer. Training data (`data_prep.synthetic`)
and the held-out benchmark files (`data_prep.synthetic_bench`) come from here, with different images and draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from data_prep import render
from data_prep.balance import balanced
from data_prep.render import CELLS, SHAPES
from pipeline.eval import mmbench, pope

COLOURS = tuple(render.COLOURS)
COUNTS = ("one", "two", "three", "four")
LETTERS = "ABCD"
# kind: the answers it can have (each drawn equally often)
ANSWERS = {
    "exists": ("yes", "no"),
    "colour": COLOURS,
    "shape": SHAPES,
    "where": CELLS,
    "count": COUNTS,
}
CHOICE_KINDS = ("colour", "shape", "where", "count")


@dataclass
class Scene:
    """(shape, colour, cell) objects and the few pixels every object is shifted by."""

    objects: list[list[str]]
    jitter: tuple[int, int]

    def image(self) -> np.ndarray:
        return render.scene([(o[0], o[1], o[2]) for o in self.objects], self.jitter)


@dataclass
class Question:
    """A question about a scene: its kind, text, options (none for yes/no) and the right answer (yes/no or option)."""

    kind: str
    text: str
    options: list[str]
    answer: str

    def prompt(self) -> str:
        """The prompt the benchmark builds for this question (without the image placeholder)."""
        if self.options:
            return mmbench.prompt(self.text, None, self.options)
        return self.text + pope.INSTRUCTION

    def target(self) -> str:
        """The answer as the model should say it: yes/no, or the option's letter."""
        return LETTERS[self.options.index(self.answer)] if self.options else self.answer


def _scene(count: int, rng: np.random.Generator) -> Scene:
    shapes, colours, cells = (rng.permutation(levels)[:count] for levels in (SHAPES, COLOURS, CELLS))
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    jitter = (dx, dy)
    return Scene([[str(s), str(c), str(p)] for s, c, p in zip(shapes, colours, cells)], jitter)


def _give(scene: Scene, obj: list[str], field: int, value: str) -> None:
    """Set `obj[field]` to `value`, swapping with the object that had it, so values stay distinct."""
    for other in scene.objects:
        if other[field] == value:
            other[field] = obj[field]
    obj[field] = value


def _options(answer: str, letter: int, levels: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Four options in random order but for the answer, which stands at `letter`."""
    others = [v for v in levels if v != answer]
    options = [others[i] for i in rng.permutation(len(others))[:3]]
    options.insert(letter, answer)
    return options


def make(
    kind: str, answer: str, count: int, asked: str, letter: int, rng: np.random.Generator
) -> tuple[Scene, Question]:
    """A scene of `count` shapes and a question of `kind` whose right answer is `answer` (at option `letter`, for
    multiple choice); `asked` is the shape a yes/no question names (count questions have `count` = their answer)."""
    scene = _scene(count, rng)
    obj = scene.objects[int(rng.integers(count))]
    if kind == "exists":
        present = {o[0] for o in scene.objects}
        if answer == "yes":
            _give(scene, obj, 0, asked)
        elif asked in present:
            absent = [s for s in SHAPES if s not in present]
            _give(scene, next(o for o in scene.objects if o[0] == asked), 0, absent[int(rng.integers(len(absent)))])
        return scene, Question(kind, f"Is there a {asked} in the image?", [], answer)
    if kind == "colour":
        _give(scene, obj, 1, answer)
        text = f"What colour is the {obj[0]}?"
    elif kind == "shape":
        _give(scene, obj, 0, answer)
        text = f"Which shape is {obj[1]}?"
    elif kind == "where":
        _give(scene, obj, 2, answer)
        text = f"Where is the {obj[0]}?"
    else:
        text = "How many shapes are in the image?"
    return scene, Question(kind, text, _options(answer, letter, ANSWERS[kind], rng), answer)


def draw(kinds: tuple[str, ...], n: int, rng: np.random.Generator) -> list[tuple[Scene, Question]]:
    """n (scene, question) pairs, the (distinct) kinds in turn. Within a kind, every (answer, named shape) pair,
    scene size and answer letter is drawn equally often (up to one)."""
    plans = {}
    for i, kind in enumerate(kinds):
        m = len(range(i, n, len(kinds)))
        pairs = balanced(tuple(product(SHAPES, ANSWERS[kind])), m, rng)  # answers vary fastest: balanced first
        plans[kind] = zip(pairs, balanced((1, 2, 3, 4), m, rng), balanced(tuple(range(len(LETTERS))), m, rng))
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        (asked, answer), count, letter = next(plans[kind])
        if kind == "count":
            count = COUNTS.index(answer) + 1
        out.append(make(kind, answer, count, asked, letter, rng))
    return out
