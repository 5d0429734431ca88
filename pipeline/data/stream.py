"""What one DataLoader worker does: read its shards, mix sources by weight, shuffle, decode, batch.

Everything is a deterministic function of (seed, epoch, slot, pass), so a worker can resume exactly by replaying its
raw stream and dropping the first `offset` samples without decoding them. A worker yields exactly its quota of
batches (see `plan`); if corrupt samples, unreadable shards or shards shorter than their index leave a pass short,
it starts another pass over its share (re-shuffled) to fill the quota, so every rank still runs the same number of
steps. Only when a whole pass gives no full batch does it end short, and say so (the loader raises `DataExhausted`).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import webdataset as wds

from pipeline.data.config import DataConfig
from pipeline.data.lengths import ShardLengths
from pipeline.data.missing import MissingConfig, apply_missing
from pipeline.data.plan import EpochPlan, ShardRef
from pipeline.data.sample import CorruptSample, allowed_file, decode_sample
from pipeline.model.processor import AVSample

Processor = Callable[[list[AVSample]], dict]


@dataclass
class ShardTrouble:
    """What reading shards went wrong with since it was last handed on: `unreadable` names the shards that failed
    (path: error), `short` maps a shard that read to its end with fewer samples than its index promises to
    (promised, found)."""

    unreadable: list[str] = field(default_factory=list)
    short: dict[str, tuple[int, int]] = field(default_factory=dict)

    def take(self) -> dict:
        """The json-able record for the item handed out, and a clean slate."""
        record = {"unreadable": list(self.unreadable), "short": dict(self.short)}
        self.unreadable.clear()
        self.short.clear()
        return record


@dataclass
class Pending:
    """A raw sample whose shape (tokens, visual, audio) the lengths cache gave; decoded when its batch is handed out."""

    sample: dict
    shape: tuple[int, bool, bool]


def read_shard(ref: ShardRef, skipped: Counter, trouble: ShardTrouble) -> Iterator[dict]:
    """Samples of one tar (only allowed extensions are read). An unreadable shard is counted and named, not raised;
    one that holds fewer samples than its index promises is noted (the loader counts it once)."""
    found = 0
    try:
        for sample in wds.tarfile_samples([{"url": ref.path}], select_files=allowed_file):
            found += 1
            yield sample
    except Exception as exc:  # missing file, truncated or garbage tar: tarfile/gopen raise various types
        skipped["unreadable_shard"] += 1
        trouble.unreadable.append(f"{ref.path}: {type(exc).__name__}: {exc}")
        return
    if found < ref.samples:
        trouble.short[ref.path] = (ref.samples, found)


def mix(streams: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    """Draw the next sample from a stream chosen with probability proportional to its weight, until all are empty."""
    live = list(range(len(streams)))
    while live:
        i = rng.choices(live, weights=[weights[j] for j in live])[0]
        try:
            yield next(streams[i])
        except StopIteration:
            live.remove(i)


class WorkerStream(torch.utils.data.IterableDataset):
    """Yields dicts {"batch", "worker", "cycle", "offset", "done", "batches", "skipped", "missing", "shards"}:
    the batch and the worker's position after it (pass, raw samples pulled before the current grouping window,
    batches handed out from that window, batches made), and the counts and shard troubles (`ShardTrouble.take`)
    since the last item. The last item per worker has batch None and only those counts; when a whole pass over the
    worker's share gave no full batch (another pass would not get further), it also says so in "exhausted" and the
    worker ends short of its quota. `resume` maps worker -> {cycle, offset, done, batches}. With `missing`, samples
    lose a modality as `pipeline.data.missing` describes; `missing` counts them by the modality lost.

    Batching (`data.batching`): every mode forms micro-batches of `micro_batch_size` samples, so the plan's step
    counts and the exactly-once guarantee do not depend on it. `pad` and `pack` take the stream's samples in order
    (`pack` joins each micro-batch into packed rows, `AVProcessor.pack`); `group` collects `group_batches`
    micro-batches' worth of samples (a window), sorts them by modality mix and length, cuts them into
    micro-batches and hands those out in a seeded random order. With `lengths` (`pipeline.data.lengths`, read before
    the epoch) a window holds raw samples and each is decoded when its micro-batch is handed out, so a worker holds
    one micro-batch of decoded media, not a window's, and resuming inside a window reads it again without decoding
    the batches already handed out; a sample whose media then fails to decode leaves its micro-batch one short.
    Without lengths the window's samples are decoded as they are pulled."""

    def __init__(
        self,
        cfg: DataConfig,
        plan: EpochPlan,
        rank: int,
        epoch: int,
        processor: Processor,
        resume: dict[int, dict] | None = None,
        missing: MissingConfig | None = None,
        lengths: ShardLengths | None = None,
    ) -> None:
        self.cfg, self.plan, self.rank, self.epoch = cfg, plan, rank, epoch
        self.lengths = lengths
        self.missing = missing if missing is not None and missing.rate > 0 else None
        self.encode = getattr(processor, "encode", None)
        self.collate = cast(Any, processor).collate if self.encode is not None else processor
        if cfg.batching != "pad" and self.encode is None:
            raise ValueError(f"data.batching: {cfg.batching} needs a processor that encodes samples one by one")
        if cfg.batching == "pack":
            self.collate = functools.partial(cast(Any, processor).pack, max_tokens=cfg.max_tokens)
        self.resume = resume or {}
        self.trouble = ShardTrouble()

    def raw(self, share: list[ShardRef], slot: int, cycle: int, skipped: Counter) -> Iterator[dict]:
        """The worker's raw (undecoded) sample stream for one pass: sources mixed by weight, then shuffled."""
        tag = f"{self.cfg.seed}-{self.epoch}-{slot}-{cycle}"
        order = random.Random(f"order-{tag}")
        streams: list[Iterator[dict]] = []
        weights: list[float] = []
        for i, src in enumerate(self.cfg.sources):
            mine = [s for s in share if s.source == i]
            if mine:
                if cycle:
                    order.shuffle(mine)
                streams.append(s for ref in mine for s in read_shard(ref, skipped, self.trouble))
                weights.append(src.weight)
        mixed = mix(streams, weights, random.Random(f"mix-{tag}"))
        size = self.cfg.shuffle_buffer
        return wds.shuffle(size, initial=size, rng=random.Random(f"shuffle-{tag}"))(mixed)

    def _prepare(self, sample: dict, skipped: Counter, missing: Counter) -> object | None:
        """Decode one raw sample (dropping a modality if it is one of the missing ones), and encode it when the
        processor can do so per sample (AVProcessor.encode), so that a sample the processor rejects (ValueError) is
        skipped and counted and batches stay full."""
        try:
            item = decode_sample(sample, self.cfg.num_frames)
        except CorruptSample as exc:
            skipped[exc.reason] += 1
            return None
        if self.missing is not None:
            item = apply_missing(item, self.missing)
            if "missing" in item.meta:
                missing[item.meta["missing"]] += 1
        if self.encode is None:
            return item
        try:
            return self.encode(item)
        except ValueError:
            skipped["rejected_by_processor"] += 1
            return None

    def _windows(
        self, share: list[ShardRef], slot: int, cycle: int, offset: int, done: int, counts: tuple[Counter, Counter]
    ) -> Iterator[tuple[object, int, int]]:
        """(batch, offset, done) for each batch of one pass from raw position `offset` on, where (offset, done) is
        the position to resume from after that batch: the raw samples pulled before its grouping window and the
        window's batches already handed out (0 at a window's end). `done` > 0 on entry re-forms the interrupted
        window (reading it again; samples without a known shape are decoded again, not counted again) and drops its
        first `done` batches."""
        skipped = counts[0]
        mbs = self.cfg.micro_batch_size
        size = mbs * (self.cfg.group_batches if self.cfg.batching == "group" else 1)
        buffer: list = []
        start, pulled = offset, offset
        for pulled, sample in enumerate(self.raw(share, slot, cycle, skipped), start=1):
            if pulled <= offset:
                continue
            shape = self.lengths.shape(sample["__url__"], sample["__key__"]) if self.lengths else None
            if shape is not None:
                buffer.append(Pending(sample, shape))
            else:
                replay = (Counter(), Counter()) if done else counts
                item = self._prepare(sample, *replay)
                if item is not None:
                    buffer.append(item)
            if len(buffer) < size:
                continue
            yield from self._batches_of(buffer, slot, cycle, (start, pulled), done, counts)
            buffer, start, done = [], pulled, 0
        if len(buffer) >= mbs:  # the pass's last, partial grouping window
            window = buffer[: len(buffer) // mbs * mbs]
            yield from self._batches_of(window, slot, cycle, (start, pulled), done, counts)

    def _batches_of(
        self, window: list, slot: int, cycle: int, span: tuple[int, int], done: int, counts: tuple[Counter, Counter]
    ) -> Iterator[tuple[object, int, int]]:
        """The micro-batches of one window (raw positions `span`; group: sorted by modality mix and length, then in a
        seeded random order), from its `done`-th on, their pending samples decoded now."""
        start, end = span
        rng = random.Random(f"group-{self.cfg.seed}-{self.epoch}-{slot}-{cycle}-{start}")
        batches = window_batches(window, self.cfg.micro_batch_size, self.cfg.batching == "group", rng)
        for k in range(done, len(batches)):
            last = k + 1 == len(batches)
            ready = [self._prepare(x.sample, *counts) if isinstance(x, Pending) else x for x in batches[k]]
            items: list = [x for x in ready if x is not None]
            if items:  # a micro-batch none of whose samples decoded is dropped (the next one fills the quota)
                yield self.collate(items), end if last else start, 0 if last else k + 1

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.rank * max(self.cfg.num_workers, 1) + worker
        share, quota = self.plan.shares[slot], self.plan.quotas[worker]
        state = self.resume.get(worker, {"cycle": 0, "offset": 0, "batches": 0})
        cycle, offset, batches, done = state["cycle"], state["offset"], state["batches"], state.get("done", 0)
        skipped: Counter = Counter()
        missing: Counter = Counter()
        self.trouble = ShardTrouble()
        exhausted = None
        while batches < quota:
            made = 0
            for batch, position, in_window in self._windows(share, slot, cycle, offset, done, (skipped, missing)):
                batches += 1
                made += 1
                yield {
                    "batch": batch,
                    "worker": worker,
                    "cycle": cycle,
                    "offset": position,
                    "done": in_window,
                    "batches": batches,
                    "skipped": dict(skipped),
                    "missing": dict(missing),
                    "shards": self.trouble.take(),
                }
                skipped.clear()
                missing.clear()
                if batches == quota:
                    break
            else:
                if made == 0 and offset == done == 0:  # a whole pass gave nothing: say so rather than spin
                    names = ", ".join(s.path for s in share)
                    exhausted = (
                        f"data: rank {self.rank} has no decodable batch left: a whole pass over worker {worker}'s "
                        f"shards ({names}) gave fewer than micro_batch_size={self.cfg.micro_batch_size} usable samples"
                    )
                    break
                cycle, offset, done = cycle + 1, 0, 0
        yield {
            "batch": None,
            "worker": worker,
            "skipped": dict(skipped),
            "missing": dict(missing),
            "shards": self.trouble.take(),
            "exhausted": exhausted,
        }


def window_batches(window: list, size: int, grouped: bool, rng: random.Random) -> list[list]:
    """A window of samples cut into batches of `size`: in stream order, or (grouped) sorted by `group_key` and
    handed out in `rng`'s random order."""
    if grouped:
        window = sorted(window, key=group_key)
    batches = [window[i : i + size] for i in range(0, len(window), size)]
    if grouped:
        rng.shuffle(batches)
    return batches


def group_key(item) -> tuple[bool, bool, int]:
    """(has visual input, has audio, tokens) of an encoded or pending sample: what `group` batching sorts a window
    by."""
    if isinstance(item, Pending):
        tokens, has_visual, has_audio = item.shape
        return has_visual, has_audio, tokens
    visual = getattr(item, "images", None) is not None or getattr(item, "video", None) is not None
    return visual, getattr(item, "audio", None) is not None, len(item.input_ids)
