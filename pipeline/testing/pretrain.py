"""The tiny LLM's "pretraining": a few hundred language-modelling steps on chat-formatted short questions.

A random LLM frozen under an adapter learns next to nothing in a CPU demo's budget; a lightly pretrained one does, as a
real LLM knows language before any multimodal training. The questions are those of the synthetic datasets
(`data_prep.synthetic`), with answers drawn at random: the model learns the chat format and which answers fit which
question, never the right one, so whatever a model gains over the per-question prior comes from the media.
"""

from __future__ import annotations

import torch

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
    ("Is there a {shape} in the image?", ["yes", "no"]),
    ("Describe the video briefly.", ["A {colour} square moving on the {side}."]),
    ("Describe the audio.", ["{count} {pitch}-pitched beeps."]),
    (AVE_QUESTION, ["{event}, from second {start} to second {end}."]),
]
FILLERS = {
    "side": ["left", "right"],
    "order": ["before", "after"],
    "sound": ["hum", "beeps"],
    "other": ["beeps", "hum"],
    "shape": ["square", "circle", "triangle", "star"],
    "colour": ["red", "green", "blue", "yellow"],
    "count": ["One", "Two", "Three", "Four"],
    "pitch": ["high", "low"],
    "event": list(AVE_EVENTS),
    "start": [str(s) for s in range(7)],
    "end": [str(s) for s in range(2, 11)],
}


def pretrain_llm(model, tokenizer, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-3) -> float:
    """A few hundred language-modelling steps on chat-formatted PRETRAIN_QA conversations; returns the last loss."""
    rng = torch.Generator().manual_seed(seed)

    def pick(options: list[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    def conversation() -> str:
        question, answers = PRETRAIN_QA[int(torch.randint(len(PRETRAIN_QA), (1,), generator=rng))]
        fill = {k: pick(v) for k, v in FILLERS.items()}
        messages = [
            {"role": "user", "content": question.format(**fill)},
            {"role": "assistant", "content": pick(answers).format(**fill)},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        enc = tokenizer(
            [conversation() for _ in range(batch)], add_special_tokens=False, padding=True, return_tensors="pt"
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss)
