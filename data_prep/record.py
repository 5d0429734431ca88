"""The common shape between a raw dataset and a shard: a `Record` (text + media paths) and its tar sample.

Converters only parse their raw format into Records (or `Skip`s with a reason); `build_sample` reads, checks and
optionally pre-decodes the media, so every source gets the same validation and the same sample layout:

    <key>.json   {"id", "source", "conversations", "media": {"video": ..., "audio": ..., "images": [...]}, "meta"}
    <key>.mp4 / <key>.wav / <key>.jpg ...          raw media bytes, or with --predecode
    <key>.frames.jpg, <key>.flac                   sampled frames stacked vertically, 16 kHz mono audio

`media` names the tar keys that hold each modality; the loader decodes exactly those keys and nothing else.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from pipeline.media import SAMPLE_RATE, MissingAudio, check_video, decode_audio, decode_video, soundtrack_wav


@dataclass
class Record:
    """One training sample before media are read: conversation, media paths and source metadata.

    `audio` may be None with `audio_from_video=True`: the audio is then the video's own soundtrack.
    """

    id: str
    source: str
    conversations: list[dict]
    video: Path | None = None
    audio: Path | None = None
    images: list[Path] = field(default_factory=list)
    audio_from_video: bool = False
    meta: dict = field(default_factory=dict)


@dataclass
class Skip:
    """A raw entry that cannot become a sample, with a short machine-countable reason and a human detail."""

    id: str
    reason: str
    detail: str = ""


class SkipSample(Exception):
    """Raised while building a sample; `reason` is the counted category."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sample_key(source: str, sample_id: str) -> str:
    """A tar key: webdataset splits names at the first dot, so keys keep only [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{source}-{sample_id}")


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SkipSample(f"missing_{kind}", f"{path}: {exc.strerror or exc}") from None


def _check_video(data: bytes, path: Path) -> None:
    try:
        check_video(data)
    except Exception as exc:  # decord raises its own DECORDError and plain RuntimeErrors
        raise SkipSample("unreadable_video", f"{path}: {exc}") from None


def _video_frames(data: bytes, path: Path, num_frames: int) -> np.ndarray:
    try:
        return decode_video(data, num_frames)
    except Exception as exc:
        raise SkipSample("unreadable_video", f"{path}: {exc}") from None


def _soundtrack_wav(data: bytes, path: Path) -> bytes:
    try:
        return soundtrack_wav(data)
    except MissingAudio as exc:
        raise SkipSample("missing_audio", f"{path}: {exc}") from None
    except Exception as exc:
        raise SkipSample("unreadable_audio", f"{path}: audio track: {exc}") from None


def _check_audio(data: bytes, path: Path) -> None:
    try:
        info = sf.info(io.BytesIO(data))
        if info.frames == 0:
            raise ValueError("no samples")
    except Exception as exc:
        raise SkipSample("unreadable_audio", f"{path}: {exc}") from None


def _audio_16k_flac(data: bytes, path: Path | None) -> bytes:
    try:
        wave = decode_audio(data)
    except Exception as exc:
        raise SkipSample("unreadable_audio", f"{path}: {exc}") from None
    out = io.BytesIO()
    sf.write(out, np.clip(wave, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def _jpg(img: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=90)
    return out.getvalue()


def build_sample(record: Record, predecode: bool = False, num_frames: int = 8) -> dict:
    """Read and check the record's media; return the tar sample (key -> bytes). Raises SkipSample."""
    sample: dict = {"__key__": sample_key(record.source, record.id)}
    media: dict = {}
    video_bytes = None
    if record.video is not None:
        video_bytes = _read(record.video, "video")
        if predecode:
            frames = _video_frames(video_bytes, record.video, num_frames)
            sample["frames.jpg"] = _jpg(np.concatenate(frames, axis=0))  # one tall strip: one tar member, one decode
            media["video"] = {"strip": "frames.jpg", "frames": len(frames)}
        else:
            _check_video(video_bytes, record.video)
            sample["mp4"] = video_bytes
            media["video"] = "mp4"
    if record.audio is not None or record.audio_from_video:
        if record.audio is not None:
            wav = _read(record.audio, "audio")
            _check_audio(wav, record.audio)
            ext = record.audio.suffix.lower().lstrip(".")
        elif video_bytes is not None and record.video is not None:
            wav, ext = _soundtrack_wav(video_bytes, record.video), "wav"
        else:
            raise SkipSample("missing_audio", f"{record.id}: audio_from_video without a video")
        if predecode:
            sample["flac"] = _audio_16k_flac(wav, record.audio or record.video)
            media["audio"] = "flac"
        else:
            sample[ext] = wav
            media["audio"] = ext
    names = []
    for i, path in enumerate(record.images):
        data = _read(path, "image")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
                fmt = img.format
        except Exception as exc:
            raise SkipSample("unreadable_image", f"{path}: {exc}") from None
        ext = "png" if fmt == "PNG" else "jpg"
        if fmt not in ("PNG", "JPEG"):
            data = _encode_jpg(data)
        name = ext if len(record.images) == 1 else f"i{i}.{ext}"
        sample[name] = data
        names.append(name)
    if names:
        media["images"] = names
    doc = {
        "id": record.id,
        "source": record.source,
        "conversations": record.conversations,
        "media": media,
        "meta": record.meta,
    }
    sample["json"] = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    return sample


def _encode_jpg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        return _jpg(np.asarray(img.convert("RGB")))
