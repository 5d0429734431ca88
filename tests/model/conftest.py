from __future__ import annotations

import numpy as np
import pytest

from pipeline.model.avllm import AVLLM
from pipeline.model.processor import AVSample

FAMILIES = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tiny_model_config):
    return AVLLM.from_config(tiny_model_config(request.param)).eval()


def mixed_samples(generation: bool = False) -> list[AVSample]:
    """Video+audio, image-only, audio-only and text-only samples: the batch mix the model must take."""
    rng = np.random.default_rng(0)

    def conv(question: str, answer: str) -> list[dict]:
        turns = [{"from": "human", "value": question}]
        return turns if generation else turns + [{"from": "gpt", "value": answer}]

    return [
        AVSample(conv("<video>\n<audio>\nHow many beeps are there?", "three"),
                 video=rng.integers(0, 255, (6, 48, 64, 3), dtype=np.uint8),
                 audio=rng.standard_normal(24000).astype(np.float32), meta={"id": "av"}),
        AVSample(conv("<image>\nWhat colour is the shape?", "red"),
                 images=[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)], meta={"id": "img"}),
        AVSample(conv("<audio>\nDescribe the audio.", "A dog barks."),
                 audio=rng.standard_normal(9000).astype(np.float32), meta={"id": "aud"}),
        AVSample(conv("Is the sound before or after the flash?", "before"), meta={"id": "txt"}),
    ]
