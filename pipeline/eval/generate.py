"""Batched greedy generation (KV cache, left padding) over a benchmark's items, spread over ranks.

The items are cut into batches of `batch_size` in file order and batch i goes to rank i mod world. A batch is
therefore the same whatever the number of ranks, and so are its padding and its outputs: one process and N ranks
give identical predictions.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.data.missing import remove_modality
from pipeline.eval.bench import CONDITIONS, BenchError, Item
from pipeline.media import MissingAudio, decode_audio, decode_image, decode_video, soundtrack_wav
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import AVSample


def _decode(path: Path | None, fn, *args):
    try:
        return fn(*args)
    except MissingAudio as exc:
        raise BenchError(f"{path}: {exc}") from None
    except Exception as exc:  # decoders raise many types (DECORDError, soundfile and PIL errors)
        raise BenchError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from None


def build_sample(item: Item, num_frames: int, drop: frozenset[str], fill: str = "drop") -> AVSample:
    """The item's prompt and decoded media, without the `drop` modalities as `remove_modality` takes them away.

    `fill` as in `pipeline.data.missing`: "drop" removes media and placeholder (the media are then not decoded at
    all), "placeholder" feeds a neutral input of the same shape. Training removes a modality by the same function.
    """
    decode = {m: m not in drop or fill != "drop" for m in ("visual", "audio")}
    tags, images, video, audio = [], [], None, None
    if item.image is not None or item.image_b64 is not None:
        if decode["visual"]:
            data = item.image.read_bytes() if item.image is not None else base64.b64decode(item.image_b64 or "")
            images.append(_decode(item.image, decode_image, data))
        tags.append("<image>")
    if item.video is not None:
        if decode["visual"]:
            video = _decode(item.video, decode_video, item.video.read_bytes(), num_frames)
        tags.append("<video>")
    if item.has_audio:
        if decode["audio"]:
            source = item.audio or item.video
            if source is None:
                raise BenchError(f"item {item.key}: has audio but names no audio or video file")
            data = source.read_bytes() if item.audio else _decode(source, soundtrack_wav, source.read_bytes())
            audio = _decode(source, decode_audio, data)
        tags.append("<audio>")
    sample = AVSample(
        conversations=[{"from": "human", "value": "\n".join(tags + [item.prompt])}],
        images=images,
        video=video,
        audio=audio,
        meta={"id": item.key},
    )
    for modality in ("visual", "audio"):
        if modality in drop and (item.has_visual if modality == "visual" else item.has_audio):
            sample = remove_modality(sample, modality, fill)
    return sample


def rank_batches(n_items: int, batch_size: int, rank: int, world: int) -> list[range]:
    starts = range(0, n_items, batch_size)
    return [range(s, min(s + batch_size, n_items)) for i, s in enumerate(starts) if i % world == rank]


@torch.no_grad()
def generate(
    model: AVLLM,
    items: list[Item],
    conditions: dict[str, str],
    batch_size: int,
    max_new_tokens: int,
    rank: int = 0,
    world: int = 1,
    desc: str = "eval",
    fill: str = "drop",
) -> dict[str, str]:
    """{item key: generated text} for this rank's batches (a progress bar on rank 0); `fill` as in build_sample."""
    processor = model.build_processor()
    device = next(model.parameters()).device
    out = {}
    for batch in tqdm(rank_batches(len(items), batch_size, rank, world), desc=desc, disable=rank != 0):
        picked = [items[i] for i in batch]
        samples = [
            build_sample(item, model.config.num_frames, CONDITIONS[conditions[item.group]], fill) for item in picked
        ]
        batch_inputs = processor(samples, padding_side="left")
        batch_inputs.pop("labels")
        inputs: dict[str, Any] = {k: v.to(device) for k, v in batch_inputs.items() if v is not None}
        texts = model.decode(model.generate(**inputs, max_new_tokens=max_new_tokens))
        out.update({item.key: text for item, text in zip(picked, texts)})
    return out
