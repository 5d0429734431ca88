"""The run's outputs (`predictions.jsonl`, `metrics.json`, `results.md`) and reading a predictions file back.

Prediction lines are the benchmark's id fields plus `text`, and `condition` for items asked with a modality
dropped; scoring a file reads the condition from there, so a missing-modality run is re-scored as it was run.
`metrics.json` holds fractions (MME scores in points); the markdown table shows percentages, one column per condition.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from pipeline.eval.bench import CONDITIONS, BenchError, Item, describe, key_of


def prediction_lines(items: list[Item], texts: list[str], conditions: dict[str, str]) -> list[dict]:
    lines = []
    for item, text in zip(items, texts):
        condition = conditions[item.group]
        lines.append({**item.fields, "text": text, **({"condition": condition} if condition != "complete" else {})})
    return lines


def _first(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def read_predictions(path: Path, items: list[Item], id_fields: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Texts aligned with `items` and each group's condition; every id must be known, unique and present.

    An id field missing from a line is taken from the items when they all share one value (a single POPE split).
    """
    index = {item.key: item for item in items}
    shared = {f: values.pop() for f in id_fields if len(values := {i.fields[f] for i in items}) == 1}
    found: dict[str, tuple[str, str]] = {}
    unknown, repeated = [], []
    try:
        raw_lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the predictions ({exc.strerror or exc})") from None
    for n, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            fields = {f: line[f] if f in line else shared[f] for f in id_fields}
            text, condition = line["text"], line.get("condition", "complete")
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BenchError(f"{path}:{n}: not a prediction line (json with {', '.join(id_fields)} and text)") from None
        if not isinstance(text, str) or condition not in CONDITIONS:
            raise BenchError(f"{path}:{n}: text must be a string and condition one of {', '.join(CONDITIONS)}")
        key = key_of(fields.values())
        if key not in index:
            unknown.append(describe(fields))
        elif key in found:
            repeated.append(describe(fields))
        else:
            found[key] = (text, condition)
    if unknown:
        raise BenchError(f"{path}: {len(unknown)} prediction(s) with unknown ids: {_first(unknown)}")
    if repeated:
        raise BenchError(f"{path}: {len(repeated)} id(s) predicted twice: {_first(repeated)}")
    absent = [describe(item.fields) for item in items if item.key not in found]
    if absent:
        raise BenchError(f"{path}: no prediction for {len(absent)} item(s): {_first(absent)}")
    conditions = {item.group: found[item.key][1] for item in items}
    return [found[item.key][0] for item in items], conditions


def score_conditions(
    name: str, module: ModuleType, items: list[Item], texts: list[str], conditions: dict[str, str]
) -> dict:
    """Metrics of each condition present, scored on that condition's items alone."""
    result: dict = {"benchmark": name, "items": {}, "metrics": {}}
    for condition in CONDITIONS:
        picked = [(item, text) for item, text in zip(items, texts) if conditions[item.group] == condition]
        if picked:
            result["items"][condition] = len(picked)
            result["metrics"][condition] = module.score(*map(list, zip(*picked)))
    return result


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics under slash-joined names (`subtype/Audio/Counting`), as the tables show them."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def markdown(result: dict, points: frozenset[str] = frozenset()) -> str:
    """One row per metric, one column per condition: percentages, except the `points` metrics (shown as is)."""
    columns = {c: flatten_metrics(m) for c, m in result["metrics"].items()}
    rows = list(dict.fromkeys(k for flat in columns.values() for k in flat))
    header = [f"{c} (n={result['items'][c]})" for c in columns]
    lines = [f"## {result['benchmark']}", "", f"| metric | {' | '.join(header)} |", f"|---|{'---:|' * len(columns)}"]
    for row in rows:
        unit = "" if row.rsplit("/", 1)[-1] in points else " %"
        cells = []
        for flat in columns.values():
            value = flat.get(row)
            cells.append("" if value is None else f"{value:.2f}" if not unit else f"{100 * value:.2f}")
        lines.append(f"| {row}{unit} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def write(out: Path, lines: list[dict], result: dict, points: frozenset[str] = frozenset()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result, points))
