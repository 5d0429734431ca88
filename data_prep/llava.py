"""LLaVA-style conversation json to Records: the generic route for image/video captions and instruction data.

Raw layout under `root`: `<split>.json` (a list) or `<split>.jsonl` (one object per line), entries
`{"id", "image" | "video" | "audio": path relative to root, "conversations": [{"from": "human"|"gpt", "value"}]}`.
Or, as LLaVA's own data comes (`llava_v1_5_mix665k.json` beside an image folder, LLaVA's `--image_folder`), one
annotation file named anything and the media folder its paths are relative to: `records_from(file, media_dir)`.
As in LLaVA, a media entry whose first human turn lacks its placeholder gets it prepended; an entry without media
is a text-only conversation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "llava"
ROLES = ("human", "gpt")


def _entries(path: Path) -> Iterator[tuple[str, dict | None, str]]:
    """(location, entry or None, error) for each entry of a json list, or of a jsonl file (one object per line)."""
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the LLaVA-style jsonl ({exc.strerror or exc})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line), ""
            except json.JSONDecodeError as exc:
                yield f"{path}:{n}", None, f"not valid JSON ({exc.msg})"
        return
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the LLaVA-style json ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: top level must be a list of conversations")
    for i, entry in enumerate(entries):
        yield f"{path}[{i}]", entry, ""


def _check_conversations(conv: object) -> list[dict]:
    if not isinstance(conv, list) or not conv:
        raise ValueError("'conversations' must be a non-empty list")
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise ValueError(f"bad turn {turn!r}: needs 'from' in {ROLES} and a string 'value'")
    return [{"from": t["from"], "value": t["value"]} for t in conv]


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    """`<split>.jsonl` (if present) or `<split>.json` under `root`, media relative to `root`."""
    jsonl = root / f"{split}.jsonl"
    return records_from(jsonl if jsonl.exists() else root / f"{split}.json", root)


def records_from(annotations: Path, media_dir: Path) -> Iterator[Record | Skip]:
    """One annotation file (`.jsonl`: one object per line; else a json list), media paths relative to `media_dir`."""
    if not media_dir.is_dir():
        raise ValueError(f"{media_dir}: the media folder does not exist (the folder the json's paths start from)")
    for where, entry, error in _entries(annotations):
        if entry is None:
            yield Skip(where, "malformed_json", f"{where}: {error}")
            continue
        try:
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError("entry needs an 'id'")
            conv = _check_conversations(entry.get("conversations"))
            for kind in ("image", "video", "audio"):
                if kind in entry and not (isinstance(entry[kind], str) and entry[kind]):
                    raise ValueError(f"'{kind}' must be a file path, got {entry[kind]!r}")
        except ValueError as exc:
            yield Skip(where, "malformed_entry", f"{where}: {exc}")
            continue
        human = next((t for t in conv if t["from"] == "human"), None)
        for kind in ("image", "video", "audio"):
            if kind in entry and human is not None and f"<{kind}>" not in human["value"]:
                human["value"] = f"<{kind}>\n{human['value']}"
        yield Record(
            id=str(entry["id"]),
            source=SOURCE,
            conversations=conv,
            video=media_dir / entry["video"] if "video" in entry else None,
            audio=media_dir / entry["audio"] if "audio" in entry else None,
            images=[media_dir / entry["image"]] if "image" in entry else [],
            meta={k: v for k, v in entry.items() if k not in ("conversations", "image", "video", "audio")},
        )
