"""Synthetic image questions: scenes of coloured shapes, asked in POPE's and MMBench's own prompt formats.

A scene holds one or two shapes (four for a counting question; distinct shapes and colours, one per quadrant). Each
question is about one scene and only its image answers it: "Is there a <colour> shape in the image?" (POPE's yes/no
object existence), and two multiple-choice kinds in MMBench's prompt: the colour of the shape in a quadrant, and how
many shapes there are. `draw` balances every answer (and the colour a yes/no question
names, and the option letter of the answer), so the question text alone cannot answer. Training data
(`data_prep.synthetic`) and the held-out benchmark files (`data_prep.synthetic_bench`) come from here, with different
images and draws; `Scene.describe` gives the scene as text (stage-1 captions, and the tiny LLM's pretraining).

What the questions ask is what the demo's tiny model can learn in its CPU budget (measured): colours, quadrants and
counts, with a trained answer that is the option's text, which MMBench's answer extraction accepts. Telling the
shapes apart, and the letter lookup an answer letter needs, stayed at chance in that budget.
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
SCENE_SIZES = (1, 2)  # shapes in the scene of every question but a counting one (one to four)
# kind: the answers it can have (each drawn equally often)
ANSWERS = {
    "exists": ("yes", "no"),
    "colour": COLOURS,
    "count": COUNTS,
}
CHOICE_KINDS = ("colour", "count")


@dataclass
class Scene:
    """(shape, colour, cell) objects and the few pixels every object is shifted by."""

    objects: list[list[str]]
    jitter: tuple[int, int]

    def image(self) -> np.ndarray:
        return render.scene([(o[0], o[1], o[2]) for o in self.objects], self.jitter)

    def describe(self) -> str:
        """The scene in words, as its questions name things: "The image shows a red shape in the top left."."""
        parts = [f"a {colour} shape in the {cell}" for _, colour, cell in self.objects]
        listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        return f"The image shows {listed}."


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
        """The trained answer: yes/no, or the option's text."""
        return self.answer

    def letter(self) -> str:
        """The right option's letter (the MMBench TSV's `answer` column)."""
        return LETTERS[self.options.index(self.answer)]


def random_scene(count: int, rng: np.random.Generator) -> Scene:
    """A scene of `count` shapes: distinct shapes, colours and quadrants, all drawn at random."""
    shapes, colours, cells = (rng.permutation(levels)[:count] for levels in (SHAPES, COLOURS, CELLS))
    dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
    return Scene([[str(s), str(c), str(p)] for s, c, p in zip(shapes, colours, cells)], (dx, dy))


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
    multiple choice); `asked` is the colour a yes/no question names (count questions have `count` = their answer)."""
    scene = random_scene(count, rng)
    obj = scene.objects[int(rng.integers(count))]
    if kind == "exists":
        if answer == "yes":
            _give(scene, obj, 1, asked)
        else:
            absent = [c for c in COLOURS if c not in {o[1] for o in scene.objects}]
            for other in scene.objects:
                if other[1] == asked:
                    other[1] = absent[int(rng.integers(len(absent)))]
        return scene, Question(kind, f"Is there a {asked} shape in the image?", [], answer)
    if kind == "colour":
        _give(scene, obj, 1, answer)
        text = f"What colour is the shape in the {obj[2]}?"
    else:
        text = "How many shapes are in the image?"
    return scene, Question(kind, text, _options(answer, letter, ANSWERS[kind], rng), answer)


def draw(kinds: tuple[str, ...], n: int, rng: np.random.Generator) -> list[tuple[Scene, Question]]:
    """n (scene, question) pairs, the (distinct) kinds in turn. Within a kind, every answer (with every named colour,
    for yes/no), scene size and answer letter is drawn equally often (up to one)."""
    plans = {}
    for i, kind in enumerate(kinds):
        m = len(range(i, n, len(kinds)))
        asked = COLOURS if kind == "exists" else ("",)
        pairs = balanced(tuple(product(asked, ANSWERS[kind])), m, rng)  # answers vary fastest: balanced first
        plans[kind] = zip(pairs, balanced(SCENE_SIZES, m, rng), balanced(tuple(range(len(LETTERS))), m, rng))
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        (asked, answer), count, letter = next(plans[kind])
        if kind == "count":
            count = COUNTS.index(answer) + 1
        out.append(make(kind, answer, count, asked, letter, rng))
    return out
