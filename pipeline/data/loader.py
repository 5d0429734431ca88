"""The training-facing loader: equal steps on every rank, skip counters for the logs, and exact resume.

Usage in the training loop:

    loader = ShardLoader(cfg.data, processor)            # rank/world from torch.distributed or RANK/WORLD_SIZE
    loader.load_state_dict(ckpt["data"])                 # optional, on resume
    for batch in loader: ...                             # exactly loader.steps_per_epoch batches, then next epoch
    ckpt["data"] = loader.state_dict()                   # small json-serialisable dict

Resume guarantee (exact): after `load_state_dict(s)` with `s` taken after the k-th batch of epoch e, the loader
yields exactly the batches (same samples, same batch composition) that an uninterrupted run would have yielded after
its k-th batch of epoch e, and no others; only the interleaving of the workers' batches may differ. It holds for the
same shards, seed, world size, workers, micro batch size and batching settings (checked on load). Workers replay
their raw streams and drop the consumed samples without decoding them (with `group` batching, the samples of an
interrupted grouping window are read again and only those not yet handed out decoded), so resuming costs reading,
not decoding. With `group`, every sample's length is known before the first epoch (`pipeline.data.lengths`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Generator
from typing import Any, cast

import torch

from pipeline.data.config import DataConfig
from pipeline.data.lengths import Measures, ShardLengths, prepare_lengths
from pipeline.data.missing import MissingConfig
from pipeline.data.plan import EpochPlan, epoch_plan, resolve_all
from pipeline.data.stream import Processor, WorkerStream
from pipeline.media import warm_up

log = logging.getLogger(__name__)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _identity(item: Any) -> Any:
    return item


class DataExhausted(RuntimeError):
    """A worker of this rank has no full batch of decodable samples left (one line: rank, shards, skip counts)."""


class ShardLoader:
    """Iterates one epoch per `iter()`, `steps_per_epoch` batches on every rank; see the module docstring.

    Leaving the loop early and calling `iter()` again continues after the last batch handed out (same as a resume).

    `skipped` counts skipped samples by reason (bad_json, bad_field, bad_video, bad_audio, bad_image, missing_media,
    placeholder_mismatch, rejected_by_processor), unreadable_shard (each failed read of a shard) and short_shard
    (each shard found to hold fewer samples than its index promises, once); `bad_shards` names the shards that
    failed and `short_shards` maps a short shard to (promised, found). Each is logged as a warning when it happens.
    A worker whose whole pass gives no full batch makes the iteration raise `DataExhausted` (one line: the rank, the
    shards, the skip counts); the epoch is then short on this rank.
    With `missing` (see `pipeline.data.missing`), `missing` counts the samples handed out without audio or visual.
    `worker_init` runs first in every DataLoader worker (the training loop makes workers outlive its stop signals).
    """

    def __init__(
        self,
        cfg: DataConfig,
        processor: Processor,
        rank: int | None = None,
        world_size: int | None = None,
        missing: MissingConfig | None = None,
        worker_init: Callable[[int], None] | None = None,
    ) -> None:
        cfg.validate()
        if missing is not None:
            missing.validate()
        env_rank, env_world = _rank_world()
        self.cfg = cfg
        self.processor = processor
        self.missing_cfg = missing
        self.worker_init = worker_init
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"data: rank {self.rank} is outside world size {self.world_size}")
        self.shards = resolve_all(cfg)
        self.lengths = None
        if cfg.batching == "group" and hasattr(processor, "length"):
            measures = cast(Measures, processor)
            prepare_lengths([s for src in self.shards for s in src], measures, self.rank, self.world_size)
            self.lengths = ShardLengths(measures)
        warm_up()
        self.epoch = 0
        self.step = 0
        self.workers: dict[int, dict] = {}
        self.skipped: Counter = Counter()
        self.missing: Counter = Counter()
        self.bad_shards: list[str] = []
        self.short_shards: dict[str, tuple[int, int]] = {}

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return epoch_plan(self.shards, self.cfg, self.epoch if epoch is None else epoch, self.rank, self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.plan().steps

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning."""
        self.epoch, self.step, self.workers = epoch, 0, {}

    def __iter__(self) -> Generator[dict, None, None]:
        plan = self.plan()
        stream = WorkerStream(
            self.cfg, plan, self.rank, self.epoch, self.processor, dict(self.workers), self.missing_cfg, self.lengths
        )
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            collate_fn=_identity,
            worker_init_fn=self.worker_init,
        )
        for item in loader:
            self.skipped.update(item["skipped"])
            self.missing.update(item["missing"])
            self._note(item["shards"])
            if item["batch"] is None:
                if item["exhausted"]:
                    counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
                    raise DataExhausted(f"{item['exhausted']}; skipped on rank {self.rank}: {counts}")
                continue
            self.workers[item["worker"]] = {k: item[k] for k in ("cycle", "offset", "done", "batches")}
            self.step += 1
            yield item["batch"]
        if self.step != plan.steps:
            raise RuntimeError(f"data: rank {self.rank} yielded {self.step} batches, planned {plan.steps}")
        self.set_epoch(self.epoch + 1)

    def _note(self, trouble: dict) -> None:
        """Log and keep a worker's shard troubles; a short shard is counted and warned about once."""
        for shard in trouble["unreadable"]:
            log.warning("data: cannot read shard %s", shard)
            self.bad_shards.append(shard)
        for path, (promised, found) in trouble["short"].items():
            if path not in self.short_shards:
                log.warning("data: shard %s holds %d samples, its index promises %d", path, found, promised)
                self.short_shards[path] = (promised, found)
                self.skipped["short_shard"] += 1

    def _fingerprint(self) -> dict:
        shards = [[os.path.basename(s.path), s.samples] for src in self.shards for s in src]
        sources = [[s.weight, s.repeat] for s in self.cfg.sources]
        digest = hashlib.sha1(json.dumps([shards, sources]).encode()).hexdigest()[:16]
        return {
            "world_size": self.world_size,
            "num_workers": self.cfg.num_workers,
            "seed": self.cfg.seed,
            "micro_batch_size": self.cfg.micro_batch_size,
            "batching": [self.cfg.batching, self.cfg.max_tokens, self.cfg.group_batches],
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "num_frames": self.cfg.num_frames,
            "shards": digest,
            "missing": list(dataclasses.astuple(self.missing_cfg)) if self.missing_cfg else None,
        }

    def state_dict(self) -> dict:
        """Position after the last batch handed out (json-serialisable)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "workers": {str(w): s for w, s in self.workers.items()},
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self._fingerprint()
        for key, value in state.get("fingerprint", {}).items():
            if mine.get(key) != value:
                raise ValueError(
                    f"data state: '{key}' was {value!r} when saved but is {mine.get(key)!r} now; "
                    "exact resume needs the same shards and data settings"
                )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.workers = {int(w): dict(s) for w, s in state["workers"].items()}
