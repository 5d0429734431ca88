"""From decoded samples to the exact batch the model consumes.

One sample is a LLaVA-style conversation plus its decoded media. The prompt is rendered with the tokenizer's chat
template; every `<image>`, `<video>` and `<audio>` placeholder is expanded here to as many placeholder tokens as
its projected features will fill, so the model splices features with one `masked_scatter` per modality and reads
the per-token modality map off the token ids (`modality_ids`). The batch also carries the question span. Labels are
-100 everywhere but the assistant turns (and the end-of-turn tokens the template puts after them, so the model
learns to stop).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from pipeline.media import SAMPLE_RATE
from pipeline.modality import Modality
from pipeline.model.packing import plan_rows

IGNORE_INDEX = -100
PLACEHOLDERS = {"<image>": Modality.VISUAL, "<video>": Modality.VISUAL, "<audio>": Modality.AUDIO}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class AVSample:
    """A conversation with its decoded media; placeholders in the human turns say where each medium goes."""

    conversations: list[dict]  # [{"from": "human"|"gpt"|"system", "value": str}]
    images: list = field(default_factory=list)  # PIL images or [H, W, 3] uint8 arrays, one per <image>, in order
    video: np.ndarray | None = None  # [T, H, W, 3] uint8 frames sampled uniformly
    audio: np.ndarray | None = None  # float32 mono waveform at the processor's sampling rate
    meta: dict = field(default_factory=dict)  # id, source, question type, answer, ...


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    question: list[bool]
    images: torch.Tensor | None  # [n_images, 3, H, W]
    video: torch.Tensor | None  # [num_frames, 3, H, W]
    audio: torch.Tensor | None  # [n_windows, ...] one feature block per window


def sample_id(sample: AVSample) -> str:
    return str(sample.meta.get("id", "<no id>"))


class AVProcessor:
    """Tokenizes, expands media placeholders, masks labels, pads, and preprocesses media for a list of samples.

    `encode` works on one sample and raises `ValueError` (naming the sample) for bad input, so a loader can skip and
    count it; `collate` pads encoded samples into a batch. `__call__` does both.
    """

    def __init__(
        self,
        tokenizer,
        *,
        image_processor=None,
        audio_processor=None,
        tokens_per_image: int = 0,
        num_frames: int = 8,
        tokens_per_window: int = 0,
        window_samples: int = SAMPLE_RATE,
        max_windows: int = 10,
        max_length: int = 2048,
        attention_break_even: float | None = None,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "the tokenizer must be a fast (tokenizers-backed) tokenizer: offsets are needed for labels"
            )
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; set model.chat_template in the config")
        missing = [p for p in PLACEHOLDERS if p not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks the media tokens {missing}; load it through AVLLM")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.audio_processor = audio_processor
        self.tokens_per_image = tokens_per_image
        self.num_frames = num_frames
        self.tokens_per_window = tokens_per_window
        self.window_samples = window_samples
        self.max_windows = max_windows
        self.max_length = max_length
        self.attention_break_even = attention_break_even  # row plans of `pack`: see pipeline.model.packing
        self.sampling_rate = getattr(audio_processor, "sampling_rate", SAMPLE_RATE)
        self.token_ids = {p: tokenizer.convert_tokens_to_ids(p) for p in PLACEHOLDERS}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # ---- prompt rendering -------------------------------------------------------------------------------------

    def _messages(self, sample: AVSample) -> list[dict]:
        messages = []
        for i, turn in enumerate(sample.conversations):
            role = ROLES.get(str(turn.get("from", turn.get("role"))))
            if role is None or not isinstance(turn.get("value", turn.get("content")), str):
                raise ValueError(
                    f"sample {sample_id(sample)}: conversations[{i}] needs 'from' "
                    f"(human|gpt|system) and a string 'value'"
                )
            messages.append({"role": role, "content": turn.get("value", turn.get("content"))})
        if not any(m["role"] == "user" for m in messages):
            raise ValueError(f"sample {sample_id(sample)}: the conversation has no human turn")
        return messages

    def _render(self, messages: list[dict]) -> str:
        generation = messages[-1]["role"] == "user"
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def _spans(self, messages: list[dict], text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Character spans of the assistant turns (to train on) and of the user turns' contents (the question)."""
        answers: list[tuple[int, int]] = []
        questions: list[tuple[int, int]] = []
        cursor = 0
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                before = self.tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                through = self.tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
                if through.startswith(before) and text.startswith(through):
                    answers.append((len(before), len(through)))  # answer + the template's end-of-turn tokens
                    cursor = len(through)
                    continue
            content = message["content"].strip()
            start = text.find(content, cursor)
            if start < 0:
                raise ValueError(f"the chat template does not render turn {i}'s text verbatim")
            end = start + len(content)
            (answers if message["role"] == "assistant" else questions).append((start, end))
            cursor = end
        return answers, questions

    # ---- media ------------------------------------------------------------------------------------------------

    def _window_count(self, samples: int) -> int:
        return min(self.max_windows, max(1, math.ceil(samples / self.window_samples)))

    def _audio_windows(self, audio: np.ndarray) -> list[np.ndarray]:
        """Fixed windows over the clip; a clip longer than max_windows windows gets windows spread evenly over it."""
        w = self.window_samples
        n = self._window_count(len(audio))
        if len(audio) <= n * w:
            return [audio[i * w : (i + 1) * w] for i in range(n)]
        starts = np.linspace(0, len(audio) - w, n).round().astype(int)
        return [audio[s : s + w] for s in starts]

    def _frames(self, video: np.ndarray) -> list[np.ndarray]:
        index = np.linspace(0, len(video) - 1, self.num_frames).round().astype(int)
        return [video[i] for i in index]

    def _check_media(self, sample: AVSample, messages: list[dict]) -> dict[str, int]:
        counts = {p: sum(m["content"].count(p) for m in messages if m["role"] == "user") for p in PLACEHOLDERS}
        if any(p in m["content"] for m in messages if m["role"] != "user" for p in PLACEHOLDERS):
            raise ValueError(f"sample {sample_id(sample)}: media placeholders may only appear in human turns")
        have = {
            "<image>": len(sample.images),
            "<video>": int(sample.video is not None),
            "<audio>": int(sample.audio is not None),
        }
        for p in PLACEHOLDERS:
            if counts[p] != have[p]:
                raise ValueError(
                    f"sample {sample_id(sample)}: {counts[p]} '{p}' placeholder(s) but {have[p]} "
                    f"{p.strip('<>')} input(s)"
                )
        if (counts["<image>"] or counts["<video>"]) and self.image_processor is None:
            raise ValueError(f"sample {sample_id(sample)}: has visual input but the model has no vision encoder")
        if counts["<audio>"] and self.audio_processor is None:
            raise ValueError(f"sample {sample_id(sample)}: has audio but the model has no audio encoder")
        if sample.video is not None and (sample.video.ndim != 4 or sample.video.shape[0] < 1):
            raise ValueError(f"sample {sample_id(sample)}: video must be [T, H, W, 3], got {sample.video.shape}")
        if sample.audio is not None and (sample.audio.ndim != 1 or len(sample.audio) == 0):
            raise ValueError(f"sample {sample_id(sample)}: audio must be a non-empty mono waveform")
        return counts

    def _expansion(self, windows: int) -> dict[int, int]:
        """Placeholder token id -> the tokens its features fill."""
        return {
            self.token_ids["<image>"]: self.tokens_per_image,
            self.token_ids["<video>"]: self.tokens_per_image * self.num_frames,
            self.token_ids["<audio>"]: self.tokens_per_window * windows,
        }

    # ---- lengths without media ---------------------------------------------------------------------------------

    def length(self, conversations: list[dict], audio_samples: int | None = None) -> int:
        """The number of tokens `encode` gives a sample, from its conversation and its audio's length in samples at
        SAMPLE_RATE (images and video expand to fixed counts), without decoding any media: what length planning
        needs before the epoch (`pipeline.data.lengths`). Raises `ValueError` for a malformed conversation."""
        messages = self._messages(AVSample(conversations))
        ids = self.tokenizer(self._render(messages), add_special_tokens=False)["input_ids"]
        expand = self._expansion(self._window_count(audio_samples) if audio_samples else 0)
        return sum(expand.get(tok, 1) for tok in ids)

    def length_key(self) -> str:
        """What `length` depends on (tokenizer, chat template, media token counts), as a short digest: the key of the
        lengths cached beside the shards."""
        tokenizer = self.tokenizer.backend_tokenizer.to_str()
        settings = [
            tokenizer,
            self.tokenizer.chat_template,
            self.tokens_per_image,
            self.num_frames,
            self.tokens_per_window,
            self.window_samples,
            self.max_windows,
        ]
        return hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:16]

    # ---- encode / collate -------------------------------------------------------------------------------------

    def encode(self, sample: AVSample, continuation: str = "") -> EncodedSample:
        """`continuation`: text that follows a conversation ending in a human turn right after the generation prompt;
        it is tokenized together with the prompt and only its tokens are labelled (what a likelihood scores)."""
        messages = self._messages(sample)
        self._check_media(sample, messages)
        text = self._render(messages)
        answers, questions = self._spans(messages, text)
        if continuation:
            if messages[-1]["role"] != "user":
                raise ValueError(
                    f"sample {sample_id(sample)}: a continuation follows a conversation ending in a human turn"
                )
            answers.append((len(text), len(text) + len(continuation)))
            text += continuation
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        windows = self._audio_windows(sample.audio) if sample.audio is not None else []
        expand = self._expansion(len(windows))
        ids, labels, question = [], [], []
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tok in expand:
                n = expand[tok]
                ids += [tok] * n
                labels += [IGNORE_INDEX] * n
                question += [False] * n
                continue
            ids.append(tok)
            labels.append(tok if any(a <= start < b for a, b in answers) else IGNORE_INDEX)
            question.append(any(a <= start < b for a, b in questions))
        if len(ids) > self.max_length:
            raise ValueError(
                f"sample {sample_id(sample)}: {len(ids)} tokens after media expansion exceed "
                f"model.max_length={self.max_length}"
            )
        if (continuation or messages[-1]["role"] == "assistant") and all(label == IGNORE_INDEX for label in labels):
            raise ValueError(
                f"sample {sample_id(sample)}: no answer tokens to {'score' if continuation else 'train on'}"
            )

        def pixels(images: list) -> torch.Tensor:
            return self.image_processor(images=images, return_tensors="pt")["pixel_values"]

        audio = None
        if windows:
            key = self.audio_processor.model_input_names[0]  # input_features (Whisper), input_values (AST)
            audio = self.audio_processor(windows, sampling_rate=self.sampling_rate, return_tensors="pt")[key]
        return EncodedSample(
            ids,
            labels,
            question,
            images=pixels(list(sample.images)) if sample.images else None,
            video=pixels(self._frames(sample.video)) if sample.video is not None else None,
            audio=audio,
        )

    def collate(self, encoded: list[EncodedSample], padding_side: str = "right") -> dict[str, torch.Tensor | None]:
        """Pad to the longest sample. Training pads right; batched generation pads left."""
        length = max(len(e.input_ids) for e in encoded)

        def pad(rows: list[list], value) -> torch.Tensor:
            out = []
            for row in rows:
                fill = [value] * (length - len(row))
                out.append(fill + row if padding_side == "left" else row + fill)
            return torch.tensor(out)

        def cat(items: list[torch.Tensor | None]) -> torch.Tensor | None:
            present = [t for t in items if t is not None]
            return torch.cat(present) if present else None

        return {
            "input_ids": pad([e.input_ids for e in encoded], self.pad_id),
            "attention_mask": pad([[1] * len(e.input_ids) for e in encoded], 0),
            "labels": pad([e.labels for e in encoded], IGNORE_INDEX),
            "question_mask": pad([e.question for e in encoded], False),
            "image_values": cat([e.images for e in encoded]),
            "video_values": cat([e.video for e in encoded]),
            "audio_values": cat([e.audio for e in encoded]),
        }

    def pack(self, encoded: list[EncodedSample], max_tokens: int) -> dict[str, torch.Tensor | None]:
        """Concatenate the samples into rows of at most `max_tokens` tokens (a longer sample gets a row of its own),
        as `pipeline.model.packing.plan_rows` plans them. No padding inside a row; rows shorter than the longest are
        padded at the end. `segment_ids` [R, L] gives each token's sample (numbered in
        row-major order, -1 at padding); the model derives restarting position ids from it and attends within a
        sample only. No attention mask: a packed batch must not get one (`AVLLM.forward` refuses it)."""
        rows = plan_rows([len(e.input_ids) for e in encoded], max_tokens, self.attention_break_even)
        order = [encoded[i] for row in rows for i in row]
        segment, seg_rows = 0, list[list[int]]()
        for row in rows:
            seg_rows.append([])
            for i in row:
                seg_rows[-1] += [segment] * len(encoded[i].input_ids)
                segment += 1
        joined = [
            EncodedSample(
                [t for i in row for t in encoded[i].input_ids],
                [t for i in row for t in encoded[i].labels],
                [q for i in row for q in encoded[i].question],
                None,
                None,
                None,
            )
            for row in rows
        ]
        batch = self.collate(joined)
        del batch["attention_mask"]
        length = cast(torch.Tensor, batch["input_ids"]).shape[1]
        batch["segment_ids"] = torch.tensor([r + [-1] * (length - len(r)) for r in seg_rows])
        for key, field_name in (("image_values", "images"), ("video_values", "video"), ("audio_values", "audio")):
            present = [getattr(e, field_name) for e in order if getattr(e, field_name) is not None]
            batch[key] = torch.cat(present) if present else None
        return batch

    def __call__(self, samples: list[AVSample], padding_side: str = "right") -> dict[str, torch.Tensor | None]:
        return self.collate([self.encode(s) for s in samples], padding_side=padding_side)
