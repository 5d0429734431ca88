"""Model references: a local directory or a Hugging Face Hub id, resolved through huggingface_hub's cache.

A reference (`model.llm`, `model.vision`, `model.audio`, `model.tokenizer`, `launch/eval.py --model`) is either a
local directory or a Hub id `org/name`, optionally with a revision `org/name@rev` (a branch, a tag or a commit hash).
A local directory wins when both could be meant. An id is looked up in the standard cache first (`HF_HUB_CACHE`, by
default `$HF_HOME/hub`): a cached snapshot is used as it is, without a network call; only an id that is not cached
is downloaded, and not at all under `HF_HUB_OFFLINE=1`. Pinning turns an id into `org/name@<commit>`, the exact
snapshot, which the run's config.yaml and the merge's merge.json record, and which resolves offline from then on.
Nothing here imports torch: the eval runner resolves `--model` before anything heavy loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?")


class ModelRefError(ValueError):
    """A reference that names no local directory and no snapshot that can be had: one line, naming the command
    that fetches it."""


@dataclass(frozen=True)
class Snapshot:
    """Where a reference's files are, and the reference that names exactly those files."""

    path: Path
    pinned: str  # the local directory as given, or `org/name@<commit>`


def is_hub_id(ref: str | Path) -> bool:
    """True if `ref` reads as a Hub id (`org/name[@rev]`) rather than a path (absolute, `./`, `~`, deeper)."""
    return isinstance(ref, str) and HUB_ID.fullmatch(ref) is not None


def fetch_command(ref: str) -> str:
    """The shell command that puts `ref` into the cache."""
    match = HUB_ID.fullmatch(ref)
    assert match is not None, ref
    revision = f" --revision {match['revision']}" if match["revision"] else ""
    return f"hf download {match['repo']}{revision}"


def resolve(ref: str | Path, key: str) -> Snapshot:
    """The files of `ref` (a local directory or a Hub id); `key` names the setting in errors."""
    local = Path(ref).expanduser()
    if local.exists():
        return Snapshot(local, str(local))
    if not is_hub_id(ref):
        raise ModelRefError(f"'{key}' points at {local}, which does not exist")
    return _snapshot(str(ref), key)


def _snapshot(ref: str, key: str) -> Snapshot:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    match = HUB_ID.fullmatch(ref)
    assert match is not None, ref
    repo, revision = match["repo"], match["revision"]
    where = f"'{key}': {ref} is neither a local directory nor in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    try:  # the cache first: a cached snapshot never costs a network call
        folder = snapshot_download(repo, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ModelRefError(
                f"{where} and HF_HUB_OFFLINE=1 forbids downloading it; fetch it with: {fetch_command(ref)}"
            ) from None
        try:
            folder = snapshot_download(repo, revision=revision)
        except (OSError, ValueError) as exc:  # not found, gated, no network, an id the Hub rejects
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelRefError(
                f"{where} and downloading it failed ({reason}); fetch it with: {fetch_command(ref)}"
            ) from None
    except ValueError as exc:  # an id the Hub's naming rules reject
        raise ModelRefError(f"'{key}': {ref} is not a local directory nor a valid Hub id ({exc})") from None
    path = Path(folder)
    return Snapshot(path, f"{repo}@{path.name}")  # a snapshot folder is named by its commit hash


def pin(ref: str | Path | None, key: str) -> str | None:
    """`ref` as it is recorded: a local directory unchanged, a Hub id as `org/name@<commit>`."""
    return None if ref is None else resolve(ref, key).pinned


def local_dir(ref: str | Path) -> Path:
    """The directory holding `ref`'s files (a pinned id resolves from the cache, without a network call)."""
    return resolve(ref, str(ref)).path
