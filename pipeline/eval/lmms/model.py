"""`--model avtrain` for lmms-eval: a merged avtrain checkpoint answering lmms-eval's `generate_until` and
`loglikelihood` requests (the latter also serve its `multiple_choice` tasks).

Each request's visuals (what the task's `doc_to_visual` returns) become one benchmark `Item`: a PIL image, a video
path (its soundtrack is the audio, as `launch/eval.py` hears MUSIC-AVQA and AVE, unless the request also carries
audio), an audio path, or an audio array (`{"array", "sampling_rate"}`, the datasets Audio feature). The items then
go through `pipeline.eval.generate.generate`, the function `launch/eval.py` calls, so the same checkpoint gives the
same answers both ways; a continuation is scored after the same prompt by `pipeline.eval.likelihood`.

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
                items = [self._item(i, requests[i], Path(spool)) for i in indices]
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
        """Per request: (the continuation's negative log-likelihood Σ -log p, whether greedy decoding gives it).

        The loss, not the log-probability, is lmms-eval 0.7's convention: its `multiple_choice` scoring picks the
        option with the smallest value (`np.argmin`), as its own models return a loss. A request is (context,
        continuation or the task's `doc_to_target`, doc_to_visual, doc_id, task, split), or (context, continuation)
        without a document (the unconditional requests of `acc_mutual_info`)."""
        import tempfile

        from pipeline.eval.likelihood import continuation_logprobs

        with tempfile.TemporaryDirectory(prefix="avtrain-lmms-") as spool:
            items = [self._item(i, request, Path(spool)) for i, request in enumerate(requests)]
            continuations = []
            for request in requests:
                target = request.args[1]
                continuations.append(target if isinstance(target, str) else str(target(self._doc(request))))
            scored = continuation_logprobs(self.model, items, continuations, self.batch_size, desc="avtrain")
        return [(-logprob, greedy) for logprob, greedy in scored]

    def _doc(self, request: Instance):
        """The task document a request is about (None for a request without one)."""
        if len(request.args) < 6:
            return None
        _, _, _, doc_id, task, split = request.args
        return self.task_dict[task][split][doc_id]

    def _item(self, i: int, request: Instance, spool: Path) -> Item:
        """Request i's benchmark item: its context and the media its task's `doc_to_visual` gives for its document."""
        doc = self._doc(request)
        doc_to_visual = request.args[2] if doc is not None else None
        visuals = doc_to_visual(doc) if doc_to_visual else []
        return request_item(str(i), request.args[0], list(visuals or []), spool)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the avtrain model answers single-round generate_until tasks only")
