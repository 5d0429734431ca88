"""Streaming access to safetensors checkpoints: read one tensor at a time, write size-bounded shards.

Why: merging a 7B LLM must not hold two copies of it. `ShardReader.read` opens the file that holds a tensor only
while it copies that tensor out, so no mapped pages stay resident; `ShardWriter` writes a shard as soon as it reaches
`max_bytes`. Peak memory is one output shard plus the tensor in hand. The output uses transformers' names
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`), so stock
`from_pretrained` reads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class ShardReader:
    """The tensors of a (possibly sharded) safetensors checkpoint directory, read one at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if (self.path / INDEX).is_file():
            self.weight_map: dict[str, str] = json.loads((self.path / INDEX).read_text())["weight_map"]
        elif (self.path / SINGLE).is_file():
            with safe_open(str(self.path / SINGLE), framework="pt") as f:
                self.weight_map = {key: SINGLE for key in f.keys()}
        else:
            raise FileNotFoundError(f"{self.path}: no {SINGLE} (or {INDEX}); weights must be in safetensors format")

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def read(self, key: str) -> torch.Tensor:
        with safe_open(str(self.path / self.weight_map[key]), framework="pt") as f:
            return f.get_tensor(key)


class ShardWriter:
    """Collects tensors and writes them in shards of at most `max_bytes` (a larger single tensor gets its own)."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.total_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        part = self.path / f"part-{len(self.shards)}.safetensors"
        save_file(self.pending, str(part), metadata={"format": "pt"})
        self.shards.append((part, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names (and the index); returns the files."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        if n == 1:
            return [self.shards[0][0].rename(self.path / SINGLE)]
        weight_map, files = {}, []
        for i, (part, keys) in enumerate(self.shards, 1):
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            files.append(part.rename(self.path / name))
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.path / INDEX).write_text(json.dumps(index, indent=2))
        return files + [self.path / INDEX]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
