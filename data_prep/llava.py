"""LLaVA-style conversation json to Records: the generic route for image/video captions and instruction data.

Raw layout under `root`: `<split>.json` (a list) or `<split>.jsonl` (one object per line), entries
`{"id", "image" | "video" | "audio": path relative to root, "conversations": [{"from": "human"|"gpt", "value"}]}`.
As in LLaVA, a media entry whose first human turn lacks its placeholder gets it prepended.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.record import Record, Skip

SOURCE = "llava"
ROLES = ("human", "gpt")


def _entries(root: Path, split: str) -> Iterator[tuple[str, dict | None, str]]:
    """(location, entry or None, error) for each entry of the json list or jsonl file."""
    jsonl, plain = root / f"{split}.jsonl", root / f"{split}.json"
    if jsonl.exists():
        for n, line in enumerate(jsonl.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{jsonl}:{n}", json.loads(line), ""
            except json.JSONDecodeError as exc:
                yield f"{jsonl}:{n}", None, f"not valid JSON ({exc.msg})"
        return
    try:
        entries = json.loads(plain.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{plain}: cannot read the LLaVA-style json ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{plain}: top level must be a list of conversations")
    for i, entry in enumerate(entries):
        yield f"{plain}[{i}]", entry, ""


def _check_conversations(conv: object) -> list[dict]:
    if not isinstance(conv, list) or not conv:
        raise ValueError("'conversations' must be a non-empty list")
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise ValueError(f"bad turn {turn!r}: needs 'from' in {ROLES} and a string 'value'")
    return [{"from": t["from"], "value": t["value"]} for t in conv]


def records(root: Path, split: str) -> Iterator[Record | Skip]:
    for where, entry, error in _entries(root, split):
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
            video=root / entry["video"] if "video" in entry else None,
            audio=root / entry["audio"] if "audio" in entry else None,
            images=[root / entry["image"]] if "image" in entry else [],
            meta={k: v for k, v in entry.items() if k not in ("conversations", "image", "video", "audio")},
        )
