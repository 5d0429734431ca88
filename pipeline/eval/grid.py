"""The missing-modality evaluation grid (`launch/eval.py --missing-grid`): MoRA's test conditions and their drops.

Test conditions, each a full pass over the benchmark:
- `complete`: every item as it is;
- `audio-missing` / `visual-missing`: every item loses that modality;
- `mixed`: a share η of the question groups loses a modality, half the visual input and half the audio, drawn by
  `pipeline.data.missing.lost_modality` (type both, both_ratio 0.5, the run's seed, the group as key): the rule
  training applies to its samples, so a model trained "mixed at η" is tested under the same mixture.
A benchmark keeps the single-modality conditions of the modalities it has, and `mixed` only when it has both: on a
visual-only benchmark the "mixed" rule would be visual-missing at η/2 under another name.

The relative drop of a metric under a condition is (complete − condition) / complete, for every metric alike
(fractions and points; positive when the condition hurts), None where the complete value is 0. The checkpoint's
train condition comes from the run's `missing` section that `pipeline.merge` records in merge.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.eval.bench import Item
from pipeline.eval.report import flatten_metrics

LOST = {"audio": "audio-missing", "visual": "visual-missing", None: "complete"}


def grid_conditions(modalities: frozenset[str]) -> list[str]:
    """The grid's conditions for a benchmark with `modalities` (just ["complete"] when it has neither)."""
    kept = ["complete", *(f"{m}-missing" for m in ("audio", "visual") if m in modalities)]
    return kept + ["mixed"] if {"audio", "visual"} <= modalities else kept


def item_conditions(test: str, items: list[Item], rate: float, seed: int) -> dict[str, str]:
    """Each group's condition (a `bench.CONDITIONS` key) under the test condition `test`."""
    groups = dict.fromkeys(item.group for item in items)
    if test != "mixed":
        return dict.fromkeys(groups, test)
    # imported here: pipeline.data.missing pulls in torch, which the input checks before this run without
    from pipeline.data.missing import MissingConfig, lost_modality

    cfg = MissingConfig(rate=rate, type="both", both_ratio=0.5, seed=seed)
    return {group: LOST[lost_modality(cfg, group)] for group in groups}


def relative_drop(complete: dict, other: dict) -> dict:
    """(complete − other) / complete for every numeric leaf, nested as the metrics are; None where complete is 0."""
    out: dict[str, Any] = {}
    for key, value in complete.items():
        if isinstance(value, dict):
            out[key] = relative_drop(value, other[key])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = (value - other[key]) / value if value else None
    return out


def train_condition(checkpoint: Path | None) -> str:
    """How the checkpoint was trained, from merge.json's `missing` (the run's section); "complete" without one."""
    from pipeline.rundir import MERGE_MANIFEST  # here: the input checks before a run import this module without torch

    manifest = checkpoint / MERGE_MANIFEST if checkpoint is not None else None
    missing = json.loads(manifest.read_text()).get("missing") if manifest and manifest.is_file() else None
    if not missing or not missing.get("rate"):
        return "complete"
    kind = "mixed" if missing["type"] == "both" else f"{missing['type']}-missing"
    share = f", visual share {missing['both_ratio']:g}" if missing["type"] == "both" else ""
    fill = ", placeholder fill" if missing.get("fill") == "placeholder" else ""
    return f"{kind} at η={missing['rate']:g}{share}{fill}"


def score_grid(
    module: ModuleType,
    items: list[Item],
    texts: dict[str, list[str]],
    conditions: dict[str, dict[str, str]],
    header: dict,
) -> dict:
    """metrics.json of a grid run: `header` (benchmark, train condition, η, fill, seed) plus, per test condition,
    its items, metrics, headline and (conditions other than complete) relative drops."""
    result = {**header, "items": {}, "metrics": {}, "headline": {}, "relative_drop": {}, "headline_drop": {}}
    for test, run in texts.items():
        metrics = module.score(items, run)
        result["items"][test] = len(items)
        result["metrics"][test] = metrics
        result["headline"][test] = module.headline(metrics)
    base = result["headline"]["complete"]
    for test in [t for t in texts if t != "complete"]:
        result["relative_drop"][test] = relative_drop(result["metrics"]["complete"], result["metrics"][test])
        result["headline_drop"][test] = (base - result["headline"][test]) / base if base else None
    if "mixed" in conditions:
        lost = [conditions["mixed"][item.group] for item in items]
        result["mixed_lost"] = {m: lost.count(f"{m}-missing") for m in ("audio", "visual")}
    return result


def _cell(value: float | None, percent: bool) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}" if percent else f"{value:.2f}"


def markdown(result: dict, points: frozenset[str] = frozenset()) -> str:
    """Rows = test conditions, columns = every metric (percentages except `points`) and the headline's drop."""
    columns = {test: flatten_metrics(m) for test, m in result["metrics"].items()}
    names = list(dict.fromkeys(k for flat in columns.values() for k in flat))
    units = {k: k.rsplit("/", 1)[-1] not in points for k in names}
    head = ["test condition", "n", *[f"{k}{' %' if units[k] else ''}" for k in names], "headline drop %"]
    lost = result.get("mixed_lost", {})
    labels = {"mixed": f"mixed η={result['missing_rate']:g} (audio {lost.get('audio')}, visual {lost.get('visual')})"}
    lines = [
        f"## {result['benchmark']}: trained {result['train_condition']}, tested under missing modalities",
        "",
        f"Fill: {result['fill']}. Headline drop: (complete − condition) / complete of the benchmark's headline metric.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for test, flat in columns.items():
        drop = result["headline_drop"].get(test)
        cells = [
            labels.get(test, test),
            str(result["items"][test]),
            *[_cell(flat.get(k), units[k]) for k in names],
            "—" if test == "complete" else _cell(drop, True),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, lines: dict[str, list[dict]], result: dict, points: frozenset[str] = frozenset()) -> None:
    """predictions-<condition>.jsonl (each one a predictions file `--predictions` scores), metrics.json, results.md."""
    out.mkdir(parents=True, exist_ok=True)
    for test, rows in lines.items():
        (out / f"predictions-{test}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result, points))
