"""`--model avtrain` for lmms-eval: a merged avtrain checkpoint answering lmms-eval's `generate_until` requests.

Each request's visuals (what the task's `doc_to_visual` returns) become one benchmark `Item`: a PIL image, a video
path (its soundtrack is the audio, as `launch/eval.py` hears MUSIC-AVQA and AVE, unless the request also carries
audio), an audio path, or an audio array (`{"array", "sampling_rate"}`, the datasets Audio feature). The items then
go through `pipeline.eval.generate.generate`, the function `launch/eval.py` calls, so the same checkpoint gives the
same answers both ways.

    lmms-eval --model avtrain --model_args pretrained=runs/merged --batch_size 8 --tasks ... --include_path ...
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import soundfile as sf
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from pipeline.eval.bench import Item

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def _image_b64(image: Image.Image) -> str:
    """PNG: lossless, so the decoded pixels are the task's."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def request_item(key: str, context: str, visuals: list, spool: Path) -> Item:
    """The benchmark item of one request; an audio array is written to `spool` as float wav (lossless)."""
    item = Item(fields={"request": key}, prompt=context, gold={}, group=key)
    for visual in visuals:
        if isinstance(visual, Image.Image):
            item.image_b64 = _image_b64(visual.convert("RGB"))
        elif isinstance(visual, dict) and "array" in visual:
            item.audio = spool / f"{key}.wav"
            sf.write(item.audio, np.asarray(visual["array"], dtype=np.float32), int(visual["sampling_rate"]), "FLOAT")
        elif isinstance(visual, (str, Path)) and Path(visual).suffix.lower() in AUDIO_SUFFIXES:
            item.audio = Path(visual)
        elif isinstance(visual, (str, Path)):
            item.video = Path(visual)
        else:
            raise ValueError(f"request {key}: an avtrain model takes images, video paths and audio, not {type(visual)}")
    item.soundtrack = item.video is not None and item.audio is None
    return item


def cut_at(text: str, until: list[str]) -> str:
    """The text before the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class AVTrainLMM(lmms):
    """`pretrained`: a merged checkpoint directory (or any `AVLLM.save_pretrained` output)."""

    is_simple = True

    def __init__(
        self, pretrained: str, batch_size: int | str = 8, max_new_tokens: int | str = 32, device: str = "auto", **_
    ) -> None:
        super().__init__()
        import torch

        from pipeline.adapters.io import load_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(Path(pretrained)).eval().to(device)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        import tempfile

        from pipeline.eval.generate import generate

        # requests sharing generation settings are answered in one pass, in their order
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        answers: dict[int, str] = {}
        with tempfile.TemporaryDirectory(prefix="avtrain-lmms-") as spool:
            for indices in groups.values():
                items = []
                for i in indices:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
                    items.append(request_item(str(i), context, list(visuals or []), Path(spool)))
                kwargs = requests[indices[0]].args[1]
                out = generate(
                    self.model,
                    items,
                    {item.group: "complete" for item in items},
                    self.batch_size,
                    int(kwargs.get("max_new_tokens", self.max_new_tokens)),
                    desc="avtrain",
                )
                until = kwargs.get("until") or []
                for item in items:
                    answers[int(item.key)] = cut_at(out[item.key], [until] if isinstance(until, str) else until)
        return [answers[i] for i in range(len(requests))]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("the avtrain model answers generate_until tasks only")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the avtrain model answers single-round generate_until tasks only")
