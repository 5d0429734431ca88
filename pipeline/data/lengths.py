"""Each sample's token count and modality mix, known before the epoch starts, so that `group` batching plans its
micro-batches from lengths and decodes each sample once, when its batch is handed out.

A shard's lengths come from its json members and its audio headers: no media is decoded, and tarfile seeks past the
media bytes. They are computed once per shard and processor (`length_key`: tokenizer, chat template, media token
counts) and cached as json beside the shards, in `.avtrain-lengths/` (or under ~/.cache/avtrain/lengths when the
shard directory is read-only). A cache entry names the shard's size and modification time and is recomputed when
the shard changed. The ranks split the shards that have no valid entry, compute them, and wait for each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from pipeline.data.plan import ShardRef
from pipeline.data.sample import field_problem, placeholders
from pipeline.media import SAMPLE_RATE

log = logging.getLogger(__name__)

CACHE_DIR = ".avtrain-lengths"

# (tokens, has visual input, has audio); None when the json and headers do not tell (a malformed json, a placeholder
# count off, an audio header soundfile cannot read): such a sample is decoded when it is pulled, as without lengths
Shape = tuple[int, bool, bool] | None


class Measures(Protocol):
    """What lengths are computed with: `AVProcessor.length` and `AVProcessor.length_key`."""

    def length(self, conversations: list[dict], audio_samples: int | None = None) -> int: ...

    def length_key(self) -> str: ...


def _members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(sample key, its members by extension) in tar order, split as webdataset splits a name: the key is the path
    up to the file name's first dot, the extension the rest."""
    key, group = None, dict[str, tarfile.TarInfo]()
    for member in tar:
        head, _, name = member.name.rpartition("/")
        if not member.isfile() or "." not in name:
            continue
        stem, ext = name.split(".", 1)
        this = f"{head}/{stem}" if head else stem
        if this != key and group:
            yield str(key), group
            group = {}
        key = this
        group[ext] = member
    if group:
        yield str(key), group


def _audio_samples(tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
    """The clip's length at SAMPLE_RATE from its header (resampling as `pipeline.media.decode_audio` does)."""
    import soundfile as sf

    info = sf.info(tar.extractfile(member))
    return math.ceil(info.frames * SAMPLE_RATE / info.samplerate)


def _shape(tar: tarfile.TarFile, by_name: dict[str, tarfile.TarInfo], measures: Measures) -> Shape:
    if "json" not in by_name:
        return None
    handle = tar.extractfile(by_name["json"])
    try:
        doc = json.loads(handle.read().decode("utf-8")) if handle is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or field_problem(doc):
        return None
    media = doc["media"]
    given = {"<image>": len(media.get("images", [])), "<video>": int("video" in media)}
    given["<audio>"] = int("audio" in media)
    if placeholders(doc["conversations"]) != given:
        return None
    audio = None
    if "audio" in media:
        member = by_name.get(media["audio"])
        if member is None:
            return None
        try:
            audio = _audio_samples(tar, member)
        except Exception:  # noqa: BLE001 - soundfile raises several types for a bad header; the decoder will count it
            return None
    try:
        tokens = measures.length(doc["conversations"], audio)
    except ValueError:
        return None
    return tokens, bool(given["<image>"] or given["<video>"]), audio is not None


def shard_shapes(path: str, measures: Measures) -> dict[str, Shape]:
    """Sample key -> `Shape` for every sample of one tar (an unreadable tar gives what could be read)."""
    shapes: dict[str, Shape] = {}
    try:
        with tarfile.open(path) as tar:
            for key, members in _members(tar):
                shapes[key] = _shape(tar, members, measures)
    except (OSError, tarfile.TarError) as exc:
        log.warning("data: lengths of %s stop at %d samples: %s", path, len(shapes), exc)
    return shapes


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def cache_path(shard: str, key: str) -> Path:
    """Where a shard's lengths for processor `key` are cached: beside the shard, or in the user cache when the shard
    directory is read-only."""
    tar = Path(shard).resolve()
    if os.access(tar.parent, os.W_OK):
        return tar.parent / CACHE_DIR / f"{tar.name}.{key}.json"
    home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "avtrain" / "lengths"
    folder = hashlib.sha1(str(tar.parent).encode()).hexdigest()[:16]
    return home / folder / f"{tar.name}.{key}.json"


def read_cached(shard: str, key: str) -> dict[str, Shape] | None:
    """The cached shapes of a shard, or None when there is no entry or the shard changed since."""
    try:
        doc = json.loads(cache_path(shard, key).read_text())
        if doc["shard"] != _stamp(shard):
            return None
        return {k: tuple(v) if v is not None else None for k, v in doc["samples"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cache(shard: str, key: str, shapes: dict[str, Shape]) -> None:
    """Write atomically (temp file, then rename): ranks computing the same shard write the same bytes."""
    target = cache_path(shard, key)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as out:
            json.dump({"shard": _stamp(shard), "samples": shapes}, out)
        os.chmod(tmp, 0o644)  # readable by whoever reads the shards (mkstemp makes it private)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None:  # our own half-written temp file (a full disk), never the cache entry or a shard
            Path(tmp).unlink(missing_ok=True)
        log.warning("data: cannot cache the lengths of %s in %s: %s", shard, target.parent, exc)


def prepare_lengths(shards: list[ShardRef], measures: Measures, rank: int, world: int) -> None:
    """Make sure every shard's lengths are cached before the epoch: each rank computes its share of the missing
    ones, then all wait (when a process group runs)."""
    key = measures.length_key()
    paths = sorted({s.path for s in shards})
    missing = [p for p in paths if read_cached(p, key) is None]
    if missing:
        start = time.perf_counter()
        mine = missing[rank::world]
        for path in mine:
            write_cache(path, key, shard_shapes(path, measures))
        log.info(
            "data: lengths of %d shards computed in %.1f s (rank %d), cached in %s",
            len(mine),
            time.perf_counter() - start,
            rank,
            cache_path(missing[0], key).parent,
        )
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class ShardLengths:
    """Shapes by (shard path, sample key), read from the cache one shard at a time as a worker opens it (or computed
    there if the cache could not be written)."""

    def __init__(self, measures: Measures) -> None:
        self.measures = measures
        self.key = measures.length_key()
        self.shards: dict[str, dict[str, Shape]] = {}

    def shape(self, shard: str, sample_key: str) -> Shape:
        if shard not in self.shards:
            cached = read_cached(shard, self.key)
            self.shards[shard] = cached if cached is not None else shard_shapes(shard, self.measures)
        return self.shards[shard].get(sample_key)
