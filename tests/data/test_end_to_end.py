"""Shards -> loader -> the lead's AVProcessor -> the tiny AVLLM: the batches are exactly what the model consumes."""

import torch

from pipeline.data.loader import ShardLoader
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import IGNORE_INDEX
from tests.data.conftest import config


def test_loader_batches_feed_the_model(shards, tiny_model_config):
    model = AVLLM.from_config(tiny_model_config("llama")).eval()
    processor = model.build_processor()
    cfg = config(shards["music_avqa"], shards["llava"], shards["audiocaps"], num_workers=2, micro_batch_size=4,
                 shuffle_buffer=8)
    loader = ShardLoader(cfg, processor)
    batches = list(loader)
    assert len(batches) == loader.steps_per_epoch and not loader.skipped
    tok = processor.token_ids
    seen = {"<image>": 0, "<video>": 0, "<audio>": 0}
    for batch in batches:
        ids = batch["input_ids"]
        assert ids.shape == batch["labels"].shape == batch["attention_mask"].shape and ids.shape[0] == 4
        assert (batch["labels"] != IGNORE_INDEX).any(dim=1).all()  # every sample has answer tokens to learn
        for name in seen:
            seen[name] += int((ids == tok[name]).sum())
    assert all(seen.values()), seen
    with torch.no_grad():
        out = model(**batches[0])
    assert torch.isfinite(out.loss)
