"""The adapter comparison table: what `launch/compare.py` reads from each finished cell and how it aggregates them.

A cell is one (adapter, seed) pair in `OUT/<adapter>-seed<seed>/` with `run/` (the training run), `merged/` (the
merge output) and `eval/` (launch/eval.py's output). Everything the table shows is read back from those files, so
the table of a resumed grid is the same as that of an uninterrupted one:

- metrics: the `complete` condition of eval/metrics.json, nested keys flattened to dotted names (`subtype.Counting`);
- trainable parameters: the floating-point tensors of run/final/trainables.safetensors (the integer ones are IMoD's
  partition masks, buffers saved beside the parameters), and the adapter's share of them (not under `projectors.`);
- step time: each metrics.jsonl row's `samples_per_s` times one step's samples (ds_config.json `train_batch_size`)
  gives that step's wall time; the table shows the median over every step of every seed (the first steps are slow);
- merged: merged/merge.json's `merged` flag;
- Non-Text Dominance Rate: the last `nontext_dominance` in metrics.jsonl (logged every `train.dominance_every` steps,
  LoRA-family adapters only).

A `--train-missing` grid adds a train condition to each cell (`OUT/<adapter>-<condition>-seed<seed>/`), evaluated
with `launch/eval.py --missing-grid`; its second table (`comparison_missing.md`/`.csv`) is MoRA's train × test table:
per (adapter, train condition) the headline metric under every test condition and its relative drop from complete.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from pipeline.rundir import MERGE_MANIFEST, TRAINABLES, RunDir

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass
class Cell:
    adapter: str
    seed: int
    metrics: dict[str, float]
    trainable: int
    adapter_params: int
    step_times: list[float]
    merged: bool
    dominance: float | None


@dataclass
class Row:
    adapter: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float | None]]  # mean, sample std (None for one seed)
    trainable: int
    adapter_params: int
    step_time: float
    merged: bool
    dominance: tuple[float, float | None] | None


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict under dotted names."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def count_params(trainables: Path) -> tuple[int, int]:
    """(all trainable parameters, the adapter's) in a trainables.safetensors, from the header alone."""
    total = adapter = 0
    with safe_open(str(trainables), framework="pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            if part.get_dtype() not in FLOAT_DTYPES:
                continue
            n = 1
            for dim in part.get_shape():
                n *= dim
            total += n
            adapter += 0 if key.startswith("projectors.") else n
    return total, adapter


def read_cell(cell: Path, adapter: str, seed: int) -> Cell:
    run = RunDir(cell / "run")
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    batch = json.loads(run.ds_config.read_text())["train_batch_size"]
    dominance = [r["nontext_dominance"] for r in rows if "nontext_dominance" in r]
    trainable, adapter_params = count_params(run.final / TRAINABLES)
    result = json.loads((cell / "eval" / "metrics.json").read_text())
    return Cell(
        adapter=adapter,
        seed=seed,
        metrics=flatten(result["metrics"]["complete"]),
        trainable=trainable,
        adapter_params=adapter_params,
        step_times=[batch / r["samples_per_s"] for r in rows],
        merged=json.loads((cell / "merged" / MERGE_MANIFEST).read_text())["merged"],
        dominance=dominance[-1] if dominance else None,
    )


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(cells: list[Cell]) -> list[Row]:
    """One row per adapter, in the order the adapters first appear in `cells`."""
    rows = []
    for adapter in dict.fromkeys(c.adapter for c in cells):
        mine = [c for c in cells if c.adapter == adapter]
        names = list(dict.fromkeys(k for c in mine for k in c.metrics))
        dominance = [c.dominance for c in mine if c.dominance is not None]
        rows.append(
            Row(
                adapter=adapter,
                seeds=[c.seed for c in mine],
                metrics={k: _mean_std([c.metrics[k] for c in mine if k in c.metrics]) for k in names},
                trainable=mine[0].trainable,
                adapter_params=mine[0].adapter_params,
                step_time=statistics.median(t for c in mine for t in c.step_times),
                merged=all(c.merged for c in mine),
                dominance=_mean_std(dominance) if dominance else None,
            )
        )
    return rows


def _fmt(stat: tuple[float, float | None] | None, scale: float) -> str:
    if stat is None:
        return "n/a"
    mean, std = stat
    return f"{scale * mean:.1f}" if std is None else f"{scale * mean:.1f} ± {scale * std:.1f}"


def markdown(rows: list[Row], bench: str, points: frozenset[str] = frozenset()) -> str:
    """The table with percentages (fractions × 100; metrics named in `points` are shown as they are)."""
    names = list(dict.fromkeys(k for r in rows for k in r.metrics))
    head = [
        "adapter",
        "seeds",
        *[f"{bench} {k}" for k in names],
        "trainable params",
        "adapter params",
        "step time (s, median)",
        "merged",
        "non-text dominance (%)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [
            r.adapter,
            ",".join(map(str, r.seeds)),
            *[_fmt(r.metrics.get(k), 1 if k.split(".")[-1] in points else 100) for k in names],
            f"{r.trainable:,}",
            f"{r.adapter_params:,}",
            f"{r.step_time:.2f}",
            "yes" if r.merged else "no",
            _fmt(r.dominance, 100),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    """Raw values (metric fractions as in metrics.json), a mean and a std column per metric; empty std for one seed."""
    names = list(dict.fromkeys(k for r in rows for k in r.metrics))
    head = [
        "adapter",
        "seeds",
        *[f"{k}_{s}" for k in names for s in ("mean", "std")],
        "trainable_params",
        "adapter_params",
        "step_time_s_median",
        "merged",
        "nontext_dominance_mean",
        "nontext_dominance_std",
    ]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(head)
        for r in rows:
            stats = [v for k in names for v in r.metrics.get(k, (None, None))]
            dom = r.dominance or (None, None)
            out.writerow(
                [
                    r.adapter,
                    " ".join(map(str, r.seeds)),
                    *["" if v is None else v for v in stats],
                    r.trainable,
                    r.adapter_params,
                    r.step_time,
                    r.merged,
                    *["" if v is None else v for v in dom],
                ]
            )


@dataclass
class GridCell:
    """One cell of a `--train-missing` grid: its eval/metrics.json from `launch/eval.py --missing-grid`."""

    adapter: str
    train: str  # the train condition as the checkpoint's merge.json records it
    seed: int
    headline: dict[str, float]  # test condition -> the benchmark's headline metric
    drop: dict[str, float | None]  # test condition (not complete) -> relative drop of the headline


@dataclass
class GridRow:
    adapter: str
    train: str
    seeds: list[int]
    headline: dict[str, tuple[float, float | None]]
    drop: dict[str, tuple[float, float | None] | None]  # None: no seed has a drop (complete scored 0)


def read_grid_cell(cell: Path, adapter: str, seed: int) -> GridCell:
    result = json.loads((cell / "eval" / "metrics.json").read_text())
    return GridCell(
        adapter=adapter,
        train=result["train_condition"],
        seed=seed,
        headline=result["headline"],
        drop=result["headline_drop"],
    )


def aggregate_grid(cells: list[GridCell]) -> list[GridRow]:
    """One row per (adapter, train condition) in order of appearance; a drop's mean and std are over the seeds'
    own drops (each seed relative to its own complete score)."""
    rows = []
    for adapter, train in dict.fromkeys((c.adapter, c.train) for c in cells):
        mine = [c for c in cells if (c.adapter, c.train) == (adapter, train)]
        tests = list(dict.fromkeys(t for c in mine for t in c.headline))
        drops = {t: [d for c in mine if (d := c.drop.get(t)) is not None] for t in tests if t != "complete"}
        rows.append(
            GridRow(
                adapter=adapter,
                train=train,
                seeds=[c.seed for c in mine],
                headline={t: _mean_std([c.headline[t] for c in mine if t in c.headline]) for t in tests},
                drop={t: _mean_std(v) if v else None for t, v in drops.items()},
            )
        )
    return rows


def _grid_tests(rows: list[GridRow]) -> list[str]:
    return list(dict.fromkeys(t for r in rows for t in r.headline))


def grid_markdown(rows: list[GridRow], bench: str, scale: float = 100) -> str:
    """MoRA's train × test table: the headline (× `scale`: 100 for fractions, 1 for points) per test condition and,
    beside each condition but complete, its relative drop from complete in %."""
    tests = _grid_tests(rows)
    head = ["adapter", "train condition", "seeds"]
    for t in tests:
        head += [t] if t == "complete" else [t, f"drop {t} (%)"]
    lines = [
        f"{bench} headline metric per test condition (mean ± std over seeds); drop = (complete − condition) / "
        "complete, each seed against its own complete score.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|---|" + "---:|" * (len(head) - 3),
    ]
    for r in rows:
        cells = [r.adapter, r.train, ",".join(map(str, r.seeds))]
        for t in tests:
            cells.append(_fmt(r.headline.get(t), scale))
            if t != "complete":
                cells.append(_fmt(r.drop.get(t), 100))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_grid_csv(rows: list[GridRow], path: Path) -> None:
    """Raw values (headline as in metrics.json, drops as fractions); empty std for one seed, empty drop for none."""
    tests = _grid_tests(rows)
    stats = [(t, "headline") for t in tests] + [(t, "drop") for t in tests if t != "complete"]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            ["adapter", "train_condition", "seeds", *[f"{t}_{kind}_{s}" for t, kind in stats for s in ("mean", "std")]]
        )
        for r in rows:
            values = [v for t, kind in stats for v in (getattr(r, kind).get(t) or (None, None))]
            out.writerow([r.adapter, r.train, " ".join(map(str, r.seeds)), *["" if v is None else v for v in values]])
