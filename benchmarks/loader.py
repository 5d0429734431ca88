"""Loader throughput: samples/s for 1 and N workers, raw vs --predecode shards, on the synthetic MUSIC-AVQA set.

    python benchmarks/loader.py [--n 32] [--workers 2] [--batch 8] [--repeat 4] [--trials 3] [--json PATH]

Builds the synthetic raw data and both kinds of shards in a temp dir (or --data DIR, reused if present), then times
full epochs of `ShardLoader` (read, shuffle, decode video with decord and audio with librosa, batch) with a processor
that only counts, so the figures are the data path alone. Each clip is 2 s of 64x64 H.264 video at 8 fps with audio.
Each figure is the best of --trials runs (two epochs each, worker start-up included): other jobs on a shared machine
only ever slow a run down. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


from data_prep.shard import index_path, write_shards
from data_prep.synthetic import generate
from pipeline.data.config import DataConfig, SourceConfig
from pipeline.data.loader import ShardLoader


def count(samples: list) -> dict:
    return {"n": len(samples)}


def prepare(data: Path, n: int) -> dict[str, Path]:
    raw = data / "raw" / "music_avqa"
    if not raw.exists():
        generate(data / "raw", n=n, seed=0)
    dirs = {"raw": data / "shards-raw", "predecoded": data / "shards-predecoded"}
    for kind, out in dirs.items():
        if not index_path(out, "music_avqa", "train").exists():
            write_shards("music_avqa", raw, "train", out, maxcount=8, workers=2, predecode=kind == "predecoded",
                         progress=False)
    return dirs


def throughput(shards: Path, workers: int, batch: int, repeat: int, epochs: int = 2) -> float:
    cfg = DataConfig(sources=[SourceConfig(shards=str(shards), repeat=repeat)], num_workers=workers,
                     micro_batch_size=batch, shuffle_buffer=64)
    loader = ShardLoader(cfg, count)
    start, samples = time.perf_counter(), 0
    for _ in range(epochs):
        samples += sum(b["n"] for b in loader)
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="synthetic clips (4 questions each)")
    parser.add_argument("--workers", type=int, default=2, help="N for the multi-worker rows")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=4, help="passes over the shards per epoch")
    parser.add_argument("--trials", type=int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--data", type=Path, help="directory for raw data and shards (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the figures to this json file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = prepare(args.data or Path(tmp), args.n)
        rows, figures = [], {}
        for kind in ("raw", "predecoded"):
            for workers in sorted({1, args.workers}):
                rate = max(throughput(dirs[kind], workers, args.batch, args.repeat) for _ in range(args.trials))
                rows.append((kind, workers, rate))
                key = f"{kind}_samples_per_s" + ("" if workers == 1 else f"_{workers}workers")
                figures[key] = round(rate, 1)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"micro batch {args.batch}, {args.repeat} passes over {args.n * 4} samples per epoch, best of {args.trials}; "
          f"load average {load} on {os.cpu_count()} CPUs")
    print(f"{'shards':<12} {'workers':>7} {'samples/s':>10}")
    for kind, workers, rate in rows:
        print(f"{kind:<12} {workers:>7} {rate:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
