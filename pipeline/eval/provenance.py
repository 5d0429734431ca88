"""Which weights an evaluation ran, as its metrics.json records them under `model`.

The checkpoint itself (the `--model` reference pinned to its Hub snapshot when it is an id, and where its files are)
and, for a merge's output, what its merge.json says it was made of: the source run, the adapter, and each base
component as the merge resolved it (`org/name@<commit>` or a local directory), with the commit hashes gathered under
`snapshots`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.model.hub import HUB_ID


def snapshot_of(ref: str | None) -> str | None:
    """The revision a pinned Hub id names (`org/name@<commit>` -> the commit); None for a local directory."""
    match = HUB_ID.fullmatch(ref) if isinstance(ref, str) else None
    return match["revision"] if match else None


def provenance(pinned: str, path: Path) -> dict:
    """`pinned`: the checkpoint reference as resolved (`hub.Snapshot.pinned`); `path`: its files."""
    from pipeline.rundir import MERGE_MANIFEST  # here: the runner imports this module before torch may load

    record: dict = {"ref": pinned, "path": str(path.resolve()), "snapshot": snapshot_of(pinned)}
    manifest = path / MERGE_MANIFEST
    if manifest.is_file():
        merge = json.loads(manifest.read_text())
        base = merge.get("base") or {}
        record |= {
            "source_run": merge.get("source_run"),
            "adapter": (merge.get("adapter") or {}).get("name"),
            "merged": merge.get("merged"),
            "dtype": merge.get("dtype"),
            "base": base,
            "snapshots": {key: snapshot_of(ref) for key, ref in base.items() if snapshot_of(ref)},
        }
    return record
