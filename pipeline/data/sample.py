"""Decode one shard sample (key -> bytes) into an `AVSample`, with only the decoders of `pipeline.media`.

The sample's `json` names the tar keys holding each modality (`media`); only those keys are decoded, with decord
(video), librosa (audio, 16 kHz mono) and PIL (images, predecoded frames). No key is ever unpickled, whatever its
extension: webdataset's default decoders would unpickle `.pyd`/`.pickle`, so they are not used. Every failure raises
`CorruptSample` with a countable reason, so the loader can skip the sample and keep going: `bad_json` (not json, or
not an object), `bad_field` (a field of the wrong type or shape: see `field_problem`), `missing_media` (a key the
json names is not in the tar), `bad_video`/`bad_audio`/`bad_image` (the decoder failed), `placeholder_mismatch`.
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
    if not isinstance(doc, dict):
        raise CorruptSample("bad_json", f"{key}: the json must be an object, got {type(doc).__name__}")
    problem = field_problem(doc)
    if problem:
        raise CorruptSample("bad_field", f"{key}: {problem}")
    return doc


def _is_name(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _turn_problem(i: int, turn: object) -> str | None:
    if not isinstance(turn, dict):
        return f"conversations[{i}] must be an object, got {type(turn).__name__}"
    role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
    if not isinstance(role, str) or not isinstance(text, str):
        return f"conversations[{i}] needs a string 'from' and a string 'value', got {role!r} and {text!r}"
    return None


def _media_problem(media: object) -> str | None:
    if not isinstance(media, dict):
        return f"'media' must be an object naming the tar keys, got {type(media).__name__}"
    video = media.get("video")
    if isinstance(video, dict):
        frames = video.get("frames")
        if not _is_name(video.get("strip")) or not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            return f"media.video as an object needs a 'strip' key and an integer 'frames' >= 1, got {video!r}"
    elif "video" in media and not _is_name(video):
        return f"media.video must name a tar key (or be {{strip, frames}}), got {video!r}"
    if "audio" in media and not _is_name(media["audio"]):
        return f"media.audio must name a tar key, got {media['audio']!r}"
    images = media.get("images", [])
    if not isinstance(images, list) or not all(_is_name(k) for k in images):
        return f"media.images must be a list of tar keys, got {images!r}"
    return None


def field_problem(doc: dict) -> str | None:
    """What is wrong with the fields of a sample's json (wrong type or shape), or None: the checks that keep a
    malformed sample from reaching the decoders and the processor."""
    turns = doc.get("conversations")
    if not isinstance(turns, list) or not turns:
        return f"'conversations' must be a non-empty list of turns, got {turns!r}"
    for i, turn in enumerate(turns):
        problem = _turn_problem(i, turn)
        if problem:
            return problem
    if "media" not in doc:
        return "'media' is missing (an object, {} for a text-only sample)"
    problem = _media_problem(doc["media"])
    if problem:
        return problem
    if not isinstance(doc.get("meta", {}), dict):
        return f"'meta' must be an object, got {doc['meta']!r}"
    if "id" in doc and (not isinstance(doc["id"], (str, int)) or isinstance(doc["id"], bool)):
        return f"'id' must be a string or an integer, got {doc['id']!r}"
    if doc.get("source") is not None and not isinstance(doc["source"], str):
        return f"'source' must be a string, got {doc['source']!r}"
    return None


def placeholders(conversations: list[dict]) -> dict[str, int]:
    """How many `<image>`, `<video>` and `<audio>` the turns of a (checked) conversation hold."""
    text = " ".join(str(t.get("value", t.get("content"))) for t in conversations)
    return {tag: text.count(tag) for tag in ("<image>", "<video>", "<audio>")}


def decode_sample(sample: dict, num_frames: int = 8) -> AVSample:
    """The `AVSample` of one shard sample; raises `CorruptSample`."""
    key = str(sample.get("__key__"))
    doc = _document(sample)
    media = doc["media"]
    video = audio = None
    if "video" in media:
        where = media["video"]
        if isinstance(where, dict):
            data = _bytes(sample, where["strip"])
            video = _guarded("bad_video", key, decode_strip, data, where["frames"], num_frames)
        else:
            video = _guarded("bad_video", key, decode_video, _bytes(sample, where), num_frames)
    if "audio" in media:
        audio = _guarded("bad_audio", key, decode_audio, _bytes(sample, media["audio"]))
    images = [_guarded("bad_image", key, decode_image, _bytes(sample, k)) for k in media.get("images", [])]
    found = placeholders(doc["conversations"])
    expected = {"<image>": len(images), "<video>": int(video is not None), "<audio>": int(audio is not None)}
    for tag, count in expected.items():
        if found[tag] != count:
            raise CorruptSample("placeholder_mismatch", f"{key}: {found[tag]} {tag} in the text, {count} given")
    meta = {"id": doc.get("id", key), "source": doc.get("source"), "key": key, **doc.get("meta", {})}
    return AVSample(conversations=doc["conversations"], images=images, video=video, audio=audio, meta=meta)
