"""The `data` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceConfig:
    """One shard set. `shards` is a directory (all its .tar files) or a glob of .tar files; sample counts come from
    the `*.index.json` written next to them by `data_prep.shard`.

    `weight` is the relative probability of drawing the next sample from this source while several still have
    samples in a worker's share; `repeat` (integer) passes over this source per epoch upsample it.
    """

    shards: str = ""
    weight: float = 1.0
    repeat: int = 1


BATCHING = {
    "pad": "each micro-batch padded to its longest sample",
    "group": "micro-batches drawn from a window of group_batches micro-batches sorted by (modality mix, length), "
    "in random order (LLaVA's group_by_modality_length)",
    "pack": "each micro-batch's samples concatenated into rows of at most max_tokens, no padding inside a row, "
    "attention within each sample; the rows planned by estimated compute (pipeline.model.packing)",
}


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    root: str = ""  # relative `sources[].shards` are taken under this directory
    num_frames: int = 8
    shuffle_buffer: int = 256
    seed: int = 0
    num_workers: int = 2
    micro_batch_size: int = 4
    batching: str = "pad"  # pad | group | pack: see BATCHING
    max_tokens: int = 0  # pack: tokens per packed row (at least model.max_length)
    group_batches: int = 8  # group: micro-batches per length-grouping window

    def validate(self) -> None:
        """Checks each listed source; an empty list is valid here (continual tasks bring their own sources) and
        refused where shards are resolved."""
        for i, src in enumerate(self.sources):
            if not src.shards:
                raise ValueError(f"'data.sources[{i}].shards' must be a directory or a glob of .tar files")
            if not src.weight > 0:
                raise ValueError(f"'data.sources[{i}].weight' must be > 0, got {src.weight}")
            if src.repeat < 1:
                raise ValueError(f"'data.sources[{i}].repeat' must be >= 1, got {src.repeat}")
        for key in ("num_frames", "shuffle_buffer", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"'data.{key}' must be >= 1, got {getattr(self, key)}")
        if self.batching not in BATCHING:
            raise ValueError(f"'data.batching' must be one of {', '.join(BATCHING)}, got '{self.batching}'")
        if self.batching == "pack" and self.max_tokens < 1:
            raise ValueError("'data.max_tokens' must be set (>= model.max_length) with data.batching: pack")
        if self.group_batches < 1:
            raise ValueError(f"'data.group_batches' must be >= 1, got {self.group_batches}")
        if self.num_workers < 0:
            raise ValueError(f"'data.num_workers' must be >= 0, got {self.num_workers}")
