"""Which shards each (rank, worker) reads in an epoch, and how many batches each may yield.

All ranks compute the same plan from the index files and the seed, so the shares are disjoint and cover every shard
without communication. Shards are shuffled per epoch and dealt to the world_size x num_workers "slots" largest first
to the least-loaded slot, which keeps the sample counts of the slots within one shard of each other.

Equal steps: every rank yields exactly `steps` batches per epoch, `steps` = the smallest number of full batches any
rank's share holds (each worker forms its own batches, so a worker's batches are floor(samples / micro_batch)).
Ranks with more samples drop the excess (the epoch is truncated to the minimum; which samples are dropped changes
every epoch with the shuffle). Each worker gets a fixed quota of those batches, so that the set of batches a rank
yields does not depend on how the DataLoader interleaves its workers.
"""

from __future__ import annotations

import glob
import json
import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.config import DataConfig


@dataclass(frozen=True)
class ShardRef:
    """A shard to read: its path, its source's position in the config, its sample count, and which repeat pass."""

    path: str
    source: int
    samples: int
    repeat: int = 0


def _counts_in(directory: Path) -> dict[str, int]:
    counts = {}
    for index in sorted(directory.glob("*.index.json")):
        try:
            doc = json.loads(index.read_text())
            counts.update({s["name"]: int(s["samples"]) for s in doc["shards"]})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a shard index written by data_prep.shard ({exc})") from None
    return counts


def resolve(spec: str, source: int) -> list[ShardRef]:
    """The shards of one source (directory or glob), with counts from the index json files next to them."""
    path = Path(spec).expanduser()
    tars = sorted(path.glob("*.tar")) if path.is_dir() else sorted(Path(p) for p in glob.glob(str(path)))
    if not tars:
        raise ValueError(f"'data.sources[{source}].shards': no .tar files match {spec}")
    counts: dict[Path, dict[str, int]] = {}
    refs = []
    for tar in tars:
        known = counts.setdefault(tar.parent, _counts_in(tar.parent))
        if tar.name not in known:
            raise ValueError(
                f"{tar}: not listed in any *.index.json in {tar.parent} (write shards with data_prep.shard)"
            )
        refs.append(ShardRef(str(tar), source, known[tar.name]))
    return refs


def resolve_all(cfg: DataConfig) -> list[list[ShardRef]]:
    if not cfg.sources:
        raise ValueError("'data.sources' must list at least one shard set")
    return [
        resolve(str(Path(cfg.root).expanduser() / src.shards) if cfg.root else src.shards, i)
        for i, src in enumerate(cfg.sources)
    ]


def assign(shards: list[list[ShardRef]], repeats: list[int], seed: int, epoch: int, slots: int) -> list[list[ShardRef]]:
    """Deal the epoch's shards (each source `repeat` times) to `slots` slots; identical on every rank."""
    rng = random.Random(f"plan-{seed}-{epoch}")
    pool = [ShardRef(s.path, s.source, s.samples, r) for src, n in zip(shards, repeats) for r in range(n) for s in src]
    rng.shuffle(pool)
    pool.sort(key=lambda s: -s.samples)  # stable: equal sizes keep the shuffled order
    loads = [0] * slots
    out: list[list[ShardRef]] = [[] for _ in range(slots)]
    for shard in pool:
        slot = min(range(slots), key=lambda i: (loads[i], i))
        out[slot].append(shard)
        loads[slot] += shard.samples
    for share in out:
        rng.shuffle(share)
    return out


@dataclass(frozen=True)
class EpochPlan:
    """Shares of all slots (slot = rank * workers + worker), the per-rank step count and this rank's worker quotas."""

    shares: list[list[ShardRef]]
    steps: int
    quotas: list[int]


def epoch_plan(shards: list[list[ShardRef]], cfg: DataConfig, epoch: int, rank: int, world: int) -> EpochPlan:
    workers = max(cfg.num_workers, 1)
    shares = assign(shards, [s.repeat for s in cfg.sources], cfg.seed, epoch, world * workers)
    full = [sum(s.samples for s in share) // cfg.micro_batch_size for share in shares]
    per_rank = [sum(full[r * workers : (r + 1) * workers]) for r in range(world)]
    steps = min(per_rank)
    if steps == 0:
        total = sum(s.samples for src in shards for s in src)
        raise ValueError(
            f"data: a rank gets no full batch ({total} samples in {sum(map(len, shards))} shards for {world} ranks x "
            f"{workers} workers x micro_batch_size {cfg.micro_batch_size}); write smaller shards (--maxcount) or use "
            "fewer workers"
        )
    quotas = full[rank * workers : (rank + 1) * workers]
    while sum(quotas) > steps:
        largest = max(range(workers), key=lambda w: (quotas[w], w))
        quotas[largest] -= 1
    return EpochPlan(shares=shares, steps=steps, quotas=quotas)
