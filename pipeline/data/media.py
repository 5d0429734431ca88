"""Decode one shard sample (key -> bytes) into an `AVSample`, with only the decoders chosen here.

The sample's `json` names the tar keys holding each modality (`media`); only those keys are decoded, with decord
(video), librosa (audio, 16 kHz mono) and PIL (images, predecoded frames). No key is ever unpickled, whatever its
extension: webdataset's default decoders would unpickle `.pyd`/`.pickle`, so they are not used. Every failure raises
`CorruptSample` with a countable reason, so the loader can skip the sample and keep going.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pipeline.model.processor import AVSample

AUDIO_RATE = 16000
# Extensions read from tar files at all; anything else (.pyd, .pickle, ...) is never even loaded into memory.
ALLOWED_EXTENSIONS = ("json", "mp4", "wav", "flac", "jpg", "jpeg", "png")


class CorruptSample(Exception):
    """A sample that cannot be decoded; `reason` is the counted category (bad_json, bad_video, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def allowed_file(name: str) -> bool:
    """Tar member filter: keep only the media and json extensions the decoders below handle."""
    return name.rsplit(".", 1)[-1].lower() in ALLOWED_EXTENSIONS


def _bytes(sample: dict, key: str) -> bytes:
    if key not in sample:
        raise CorruptSample("missing_media", f"{sample.get('__key__')}: no '{key}' entry in the shard")
    return sample[key]


def uniform_indices(n: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over n frames, first and last included."""
    return np.linspace(0, n - 1, num_frames).round().astype(int)


def decode_video(data: bytes, num_frames: int) -> np.ndarray:
    """[T, H, W, 3] uint8 frames sampled uniformly over the clip, read from mp4 bytes by decord."""
    import decord  # x86_64-only wheel: imported where videos are read, not at package import

    reader = decord.VideoReader(io.BytesIO(data))
    if len(reader) == 0:
        raise ValueError("video has no frames")
    return reader.get_batch(list(uniform_indices(len(reader), num_frames))).asnumpy()


def decode_strip(data: bytes, count: object, num_frames: int) -> np.ndarray:
    """Predecoded frames (a jpg of `count` frames stacked vertically), resampled uniformly to `num_frames`."""
    count = int(count)
    strip = np.asarray(decode_image(data))
    if count < 1 or strip.shape[0] % count:
        raise ValueError(f"a strip of height {strip.shape[0]} cannot hold {count} frames")
    frames = strip.reshape(count, strip.shape[0] // count, *strip.shape[1:])
    return frames[uniform_indices(count, num_frames)]


def decode_audio(data: bytes) -> np.ndarray:
    """Float32 mono waveform at 16 kHz (librosa resamples when the file's rate differs)."""
    import librosa

    wave, _ = librosa.load(io.BytesIO(data), sr=AUDIO_RATE, mono=True)
    if wave.size == 0:
        raise ValueError("audio has no samples")
    return wave.astype(np.float32, copy=False)


def warm_up() -> None:
    """Pay librosa's one-off start-up (lazy scipy imports, numba cache loading: seconds) in the calling process.

    DataLoader workers are forked anew every epoch; warmed up in the parent, they inherit it instead of each paying.
    """
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, np.float32), 8000, format="WAV")
    decode_audio(buf.getvalue())


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
        return img.convert("RGB")


def _guarded(reason: str, key: str, fn, *args):
    try:
        return fn(*args)
    except CorruptSample:
        raise
    except Exception as exc:  # decoders raise many types (DECORDError, soundfile.LibsndfileError, PIL errors)
        raise CorruptSample(reason, f"{key}: {type(exc).__name__}: {exc}") from None


def _document(sample: dict) -> dict:
    key = sample.get("__key__")
    try:
        doc = json.loads(_bytes(sample, "json").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSample("bad_json", f"{key}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("conversations"), list) or not isinstance(
        doc.get("media"), dict
    ):
        raise CorruptSample("bad_json", f"{key}: needs 'conversations' (list) and 'media' (object)")
    return doc


def decode_sample(sample: dict, num_frames: int = 8) -> AVSample:
    """The `AVSample` of one shard sample; raises `CorruptSample`."""
    key = sample.get("__key__")
    doc = _document(sample)
    media = doc["media"]
    video = audio = None
    if "video" in media:
        where = media["video"]
        if isinstance(where, dict):
            data = _bytes(sample, str(where.get("strip")))
            video = _guarded("bad_video", key, decode_strip, data, where.get("frames"), num_frames)
        else:
            video = _guarded("bad_video", key, decode_video, _bytes(sample, where), num_frames)
    if "audio" in media:
        audio = _guarded("bad_audio", key, decode_audio, _bytes(sample, media["audio"]))
    images = [_guarded("bad_image", key, decode_image, _bytes(sample, k)) for k in media.get("images", [])]
    human = " ".join(t.get("value", "") for t in doc["conversations"] if isinstance(t, dict))
    expected = {"<image>": len(images), "<video>": int(video is not None), "<audio>": int(audio is not None)}
    for tag, count in expected.items():
        if human.count(tag) != count:
            raise CorruptSample("placeholder_mismatch", f"{key}: {human.count(tag)} {tag} in the text, {count} given")
    meta = {"id": doc.get("id", key), "source": doc.get("source"), "key": key, **doc.get("meta", {})}
    return AVSample(conversations=doc["conversations"], images=images, video=video, audio=audio, meta=meta)
