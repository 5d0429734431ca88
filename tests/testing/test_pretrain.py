"""The tiny LLM's pretraining data: the described-scene questions are answered by their description alone."""

from __future__ import annotations

import re

import numpy as np

from data_prep import scenes
from pipeline.testing.pretrain import pretrain_llm, scene_questions
from pipeline.testing.tiny import build_llm, build_tokenizer

DESCRIBED = re.compile(r"a (\w+) shape in the (\w+ \w+)")


def test_every_described_scene_question_follows_from_its_description():
    asked = set()
    for prompt, answer in scene_questions(300, np.random.default_rng(0)):
        description, question = prompt.split(". ", 1)
        colour_at = {cell: colour for colour, cell in DESCRIBED.findall(description)}
        if question.startswith("Is there"):
            colour = question.split()[3]
            assert answer == ("yes" if colour in colour_at.values() else "no"), prompt
        elif question.startswith("What colour"):
            assert answer == colour_at[question.removeprefix("What colour is the shape in the ").rstrip("?")], prompt
        else:
            assert answer == scenes.COUNTS[len(colour_at) - 1], prompt
        asked.add(question.split()[0])
    assert asked == {"Is", "What", "How"}


def test_pretraining_lowers_the_language_modelling_loss():
    tokenizer = build_tokenizer("llama")
    model = build_llm("llama", tokenizer)
    first = pretrain_llm(model, tokenizer, steps=1, seed=0, batch=8)
    last = pretrain_llm(model, tokenizer, steps=40, seed=1, batch=8)
    assert last < 0.8 * first
