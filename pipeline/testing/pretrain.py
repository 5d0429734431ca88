"""The tiny LLM's "pretraining": a few hundred language-modelling steps on chat-formatted short questions.

A random LLM frozen under an adapter learns next to nothing in a CPU demo's budget; a lightly pretrained one does, as a
real LLM knows language before any multimodal training. The questions are those of the synthetic datasets
(`data_prep.synthetic`), the image ones in POPE's and MMBench's prompt formats (`data_prep.scenes`, no image), with
answers drawn at random: the model learns the chat format and which answers fit which question (yes/no, an option
letter), never the right one, so whatever a model gains over the per-question prior comes from the media.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import trange

from data_prep import scenes
from data_prep.synthetic import AVE_EVENTS
from pipeline.formats.ave import QUESTION as AVE_QUESTION

# Short chat-formatted questions with their possible answers (fillers in braces).
PRETRAIN_QA = [
    ("How many beeps are heard in the video?", ["one", "two", "three", "four"]),
    ("How many beeps are there?", ["one", "two", "three", "four"]),
    ("What colour is the shape on the {side}?", ["red", "green", "blue", "yellow"]),
    ("What colour is the shape?", ["red", "green", "blue", "yellow"]),
    ("Do the beeps sound {order} the shape appears?", ["yes", "no"]),
    ("Is the {sound} louder than the {other}?", ["yes", "no"]),
    ("Describe the video briefly.", ["A {colour} square moving on the {side}."]),
    ("Describe the audio.", ["{count} {pitch}-pitched beeps."]),
    (AVE_QUESTION, ["{event}, from second {start} to second {end}."]),
]
FILLERS = {
    "side": ["left", "right"],
    "order": ["before", "after"],
    "sound": ["hum", "beeps"],
    "other": ["beeps", "hum"],
    "colour": ["red", "green", "blue", "yellow"],
    "count": ["One", "Two", "Three", "Four"],
    "pitch": ["high", "low"],
    "event": list(AVE_EVENTS),
    "start": [str(s) for s in range(7)],
    "end": [str(s) for s in range(2, 11)],
}


IMAGE_SLOTS = 2  # beside the PRETRAIN_QA templates: a POPE-style question, an MMBench-style one (any kind)


def image_question(choice: bool, rng: np.random.Generator) -> tuple[str, str]:
    """A synthetic image question, MMBench-style if `choice` else POPE-style, in its benchmark's prompt (the image
    left out) and a random answer that fits it: yes/no, or any option letter."""
    kind = scenes.CHOICE_KINDS[rng.integers(len(scenes.CHOICE_KINDS))] if choice else "exists"
    answers, letters = scenes.ANSWERS[kind], range(len(scenes.LETTERS))
    answer, asked = answers[rng.integers(len(answers))], scenes.SHAPES[rng.integers(len(scenes.SHAPES))]
    count = scenes.COUNTS.index(answer) + 1 if kind == "count" else int(rng.integers(1, 5))
    _, question = scenes.make(kind, answer, count, asked, int(rng.integers(len(letters))), rng)
    reply = str(rng.choice(["yes", "no"])) if kind == "exists" else scenes.LETTERS[rng.integers(len(letters))]
    return question.prompt(), reply


def pretrain_llm(
    model, tokenizer, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-3, progress: bool = False
) -> float:
    """A few hundred language-modelling steps on chat-formatted PRETRAIN_QA conversations and synthetic image
    questions (a progress bar with `progress`); returns the last loss."""
    rng = torch.Generator().manual_seed(seed)
    np_rng = np.random.default_rng(seed)

    def pick(options: list[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    def conversation() -> str:
        slot = int(torch.randint(len(PRETRAIN_QA) + IMAGE_SLOTS, (1,), generator=rng))
        if slot < len(PRETRAIN_QA):
            question, answers = PRETRAIN_QA[slot]
            fill = {k: pick(v) for k, v in FILLERS.items()}
            prompt, reply = question.format(**fill), pick(answers).format(**fill)
        else:
            prompt, reply = image_question(slot > len(PRETRAIN_QA), np_rng)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in trange(steps, desc="pretrain the tiny LLM", unit="step", disable=not progress):
        enc = tokenizer(
            [conversation() for _ in range(batch)], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())
