"""Decode one shard sample (key -> bytes) into an `AVSample`, with only the decoders of `pipeline.media`.

The sample's `json` names the tar keys holding each modality (`media`); only those keys are decoded, with decord
(video), librosa (audio, 16 kHz mono) and PIL (images, predecoded frames). No key is ever unpickled, whatever its
extension: webdataset's default decoders would unpickle `.pyd`/`.pickle`, so they are not used. Every failure raises
`CorruptSample` with a countable reason, so the loader can skip the sample and keep going.
"""

from __future__ import annotations

import json

from pipeline.media import decode_audio, decode_image, decode_strip, decode_video
from pipeline.model.processor import AVSample

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
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("conversations"), list)
        or not isinstance(doc.get("media"), dict)
    ):
        raise CorruptSample("bad_json", f"{key}: needs 'conversations' (list) and 'media' (object)")
    return doc


def decode_sample(sample: dict, num_frames: int = 8) -> AVSample:
    """The `AVSample` of one shard sample; raises `CorruptSample`."""
    key = str(sample.get("__key__"))
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
