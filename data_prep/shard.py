"""Shard CLI: one source's raw split to WebDataset tar shards plus an index json.

    python -m data_prep.shard --source music_avqa --root RAW --split train --out SHARDS [--maxcount 64] [--workers 4]
        [--predecode] [--num-frames 8]
    python -m data_prep.shard --source llava --json mix665k.json --media-dir IMAGES --split train --out SHARDS

`--json FILE --media-dir DIR` reads one annotation file named anything, its media paths relative to DIR (LLaVA's
`--image_folder`; default: the file's folder), for the sources that read one (llava); `--split` then only names the
output.

Writes OUT/<source>-<split>-000000.tar ... and OUT/<source>-<split>.index.json (samples per shard, modality counts,
skipped counts by reason). Bad raw entries are skipped with a reason; the run fails only if nothing valid was written.
Each shard is written to a temp name and renamed, and the index is written last, so a crash leaves no half-shard
that the loader would pick up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from data_prep import audiocaps, ave, llava, music_avqa
from data_prep.record import Record, Skip, SkipSample, build_sample

CONVERTERS = {"music_avqa": music_avqa, "ave": ave, "llava": llava, "audiocaps": audiocaps}
INDEX_VERSION = 1


def index_path(out: Path, source: str, split: str) -> Path:
    return out / f"{source}-{split}.index.json"


def _build(item: Record | Skip, predecode: bool, num_frames: int) -> dict | Skip:
    if isinstance(item, Skip):
        return item
    try:
        return build_sample(item, predecode=predecode, num_frames=num_frames)
    except SkipSample as exc:
        return Skip(item.id, exc.reason, exc.detail)


class _ShardSink:
    """Writes samples into numbered shards of at most `maxcount`, each via a temp file renamed when complete."""

    def __init__(self, out: Path, prefix: str, maxcount: int) -> None:
        self.out, self.prefix, self.maxcount = out, prefix, maxcount
        self.shards: list[dict] = []
        self._writer: wds.TarWriter | None = None
        self._tmp: Path | None = None

    def write(self, sample: dict) -> None:
        if self._writer is None:
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self._tmp = self.out / f".{name}.tmp{os.getpid()}"
            self._writer = wds.TarWriter(str(self._tmp), encoder=False)
            self.shards.append({"name": name, "samples": 0})
        self._writer.write(sample)
        self.shards[-1]["samples"] += 1
        if self.shards[-1]["samples"] >= self.maxcount:
            self.close()

    def close(self) -> None:
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            self._tmp.replace(self.out / self.shards[-1]["name"])
            self._writer = None


def write_shards(
    source: str,
    root: Path,
    split: str,
    out: Path,
    maxcount: int = 64,
    workers: int = 1,
    predecode: bool = False,
    num_frames: int = 8,
    progress: bool = True,
    annotations: Path | None = None,
) -> dict:
    """Convert and shard; returns the index (also written to `index_path`). ValueError if nothing valid.
    With `annotations` (one file), `root` is the media folder its paths start from and `split` only names the output."""
    if source not in CONVERTERS:
        raise ValueError(f"--source must be one of {', '.join(CONVERTERS)}, got {source!r}")
    for flag, value in (("--maxcount", maxcount), ("--workers", workers), ("--num-frames", num_frames)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if annotations is None:
        items = list(CONVERTERS[source].records(root, split))
    elif hasattr(CONVERTERS[source], "records_from"):
        items = list(CONVERTERS[source].records_from(annotations, root))
    else:
        takes = ", ".join(name for name, module in CONVERTERS.items() if hasattr(module, "records_from"))
        raise ValueError(f"--json: {source} reads its raw layout from --root; a single annotation file is for {takes}")
    out.mkdir(parents=True, exist_ok=True)
    sink = _ShardSink(out, f"{source}-{split}", maxcount)
    skipped: Counter = Counter()
    examples: dict[str, str] = {}
    modalities: Counter = Counter()
    build = partial(_build, predecode=predecode, num_frames=num_frames)
    with Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap(build, items, chunksize=4)
        for result in tqdm(results, total=len(items), desc=f"{source}/{split}", disable=not progress, file=sys.stderr):
            if isinstance(result, Skip):
                skipped[result.reason] += 1
                examples.setdefault(result.reason, result.detail or result.id)
                continue
            sink.write(result)
            modalities.update(json.loads(result["json"])["media"].keys())
    sink.close()
    total = sum(s["samples"] for s in sink.shards)
    index = {
        "version": INDEX_VERSION,
        "source": source,
        "split": split,
        "predecoded": predecode,
        "num_frames": num_frames if predecode else None,
        "total": total,
        "shards": sink.shards,
        "modalities": dict(modalities),
        "skipped": dict(skipped),
        "skipped_examples": examples,
    }
    if total == 0:
        raise ValueError(f"{root}: no valid {source}/{split} samples (skipped: {dict(skipped) or 'none found'})")
    path = index_path(out, source, split)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(path)
    return index


class _Serial:
    """`Pool`-like context for --workers 1: no subprocesses (easier to debug and profile)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn, items, chunksize: int = 1):
        return map(fn, items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, choices=sorted(CONVERTERS))
    raw = parser.add_mutually_exclusive_group(required=True)
    raw.add_argument("--root", type=Path, help="raw dataset directory")
    raw.add_argument("--json", type=Path, help="one annotation file (llava: e.g. llava_v1_5_mix665k.json)")
    parser.add_argument("--media-dir", type=Path, help="with --json: the folder its media paths start from")
    parser.add_argument("--split", required=True, help="the split read under --root, or the output's name with --json")
    parser.add_argument("--out", type=Path, required=True, help="output directory for shards and index")
    parser.add_argument("--maxcount", type=int, default=256, help="samples per shard")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes reading media")
    parser.add_argument("--predecode", action="store_true", help="store sampled jpg frames and 16 kHz flac audio")
    parser.add_argument("--num-frames", type=int, default=8, help="frames stored per video with --predecode")
    args = parser.parse_args(argv)
    if args.media_dir is not None and args.json is None:
        parser.error("--media-dir goes with --json (with --root, media paths start from the root)")
    root = args.root if args.json is None else (args.media_dir or args.json.parent)
    try:
        index = write_shards(
            args.source,
            root,
            args.split,
            args.out,
            args.maxcount,
            args.workers,
            args.predecode,
            args.num_frames,
            annotations=args.json,
        )
    except (ValueError, OSError) as exc:  # bad input; a missing root, a read-only or full --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(index["skipped"].items())) or "none"
    print(
        f"{args.source}/{args.split}: {index['total']} samples in {len(index['shards'])} shards "
        f"-> {index_path(args.out, args.source, args.split)}; skipped: {skipped}"
    )
    for reason, example in index["skipped_examples"].items():
        print(f"  {reason}: e.g. {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
