"""The comparison grid behind `launch/compare.py`: run one stage-2 recipe for several adapters and seeds, merge,
evaluate, and tabulate the comparison.

    python launch/compare.py --config configs/demo/stage2.yaml --stage1-run DIR --adapters lora,dora,imod \\
        --seeds 0,1,2 --bench music_avqa --data PATH [--media-root DIR] --out DIR [--nproc 2] [--keep-adapters] \\
        [--batch-size 16] [--max-new-tokens 8] [key=value ...]   (overrides of the stage-2 config)
        [--train-missing complete,audio,visual,mixed --missing-rate η [--missing-fill drop|placeholder]]

Each (adapter, seed) cell lives in OUT/<adapter>-seed<seed>/: run/ (trained with `deepspeed --num_gpus NPROC
launch/train.py`, `adapter.name`, `seed`, `stage1_run` and `output_dir` set per cell), merged/ (pipeline.merge; an
adapter whose class is not mergeable, or every adapter with --keep-adapters, is shipped unmerged) and eval/
(launch/eval.py on --bench). The grid resumes: a cell with run/final/, merged/merge.json and eval/metrics.json is
read back, not redone (its config.yaml must match the recipe, or it is refused); an interrupted training resumes from
its newest complete checkpoint (`resume=auto`); merge and eval outputs appear atomically, so a killed one is redone.
OUT/comparison.md and OUT/comparison.csv hold the table (see pipeline/compare.py for what each column means).

With --train-missing each cell is (adapter, train condition, seed) in OUT/<adapter>-<condition>-seed<seed>/: the
condition sets the run's `missing` section (complete: rate 0; audio, visual: that type at rate η; mixed: type both,
both_ratio 0.5, at rate η; fill --missing-fill), and the cell is evaluated with `launch/eval.py --missing-grid` at the
same η and fill. OUT/comparison_missing.md/.csv add MoRA's train × test table; comparison.md's rows are then
"<adapter> (<condition>)". Without --train-missing the grid is the adapter × seed one, cells named as always.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MANAGED = ("adapter.name", "seed", "stage1_run", "output_dir", "resume")  # set by this script, per cell
MISSING_MANAGED = ("missing.rate", "missing.type", "missing.both_ratio", "missing.fill")  # and with --train-missing
TRAIN_MISSING = {"complete": None, "audio": "audio", "visual": "visual", "mixed": "both"}  # -> missing.type


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="the stage-2 config YAML (the shared recipe)")
    parser.add_argument("--stage1-run", type=Path, required=True, help="finished stage-1 run directory")
    parser.add_argument("--adapters", required=True, help="comma-separated registered adapter names")
    parser.add_argument("--seeds", default="0", help="comma-separated integer seeds (default: 0)")
    parser.add_argument("--bench", required=True, help="benchmark of launch/eval.py")
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's file or folder")
    parser.add_argument("--media-root", type=Path, help="where the benchmark's media are (default: next to --data)")
    parser.add_argument("--out", type=Path, required=True, help="grid directory (created; reused to resume)")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks per training run")
    parser.add_argument("--keep-adapters", action="store_true", help="ship every adapter unmerged")
    parser.add_argument("--batch-size", type=int, default=16, help="eval batch size")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="eval generation length")
    parser.add_argument("--train-missing", help="comma-separated train conditions: complete, audio, visual, mixed")
    parser.add_argument("--missing-rate", type=float, help="η of the train conditions and of the mixed test condition")
    parser.add_argument(
        "--missing-fill",
        choices=("drop", "placeholder"),
        help="how a lost modality is fed, in training and eval (default: drop)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the stage-2 config")
    return parser.parse_args(argv)


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items) or len(set(items)) != len(items):
        raise ValueError(f"--{what}: '{text}' must be a comma-separated list of distinct, non-empty values")
    return items


def parse_seeds(text: str) -> list[int]:
    items = parse_list(text, "seeds")
    if not all(t.lstrip("-").isdigit() for t in items):
        raise ValueError(f"--seeds: '{text}' must be comma-separated integers, e.g. 0,1,2")
    return [int(t) for t in items]


def cell_name(adapter: str, train: str | None, seed: int) -> str:
    return f"{adapter}-seed{seed}" if train is None else f"{adapter}-{train}-seed{seed}"


def missing_overrides(args: argparse.Namespace, train: str | None) -> list[str]:
    """The `missing` section of a train condition (nothing without --train-missing)."""
    if train is None:
        return []
    if train == "complete":
        return ["missing.rate=0"]
    mixed = ["missing.both_ratio=0.5"] if train == "mixed" else []
    return [
        f"missing.rate={args.missing_rate}",
        f"missing.type={TRAIN_MISSING[train]}",
        *mixed,
        f"missing.fill={args.missing_fill}",
    ]


def cell_overrides(
    args: argparse.Namespace, cell: Path, adapter: str, seed: int, train: str | None = None
) -> list[str]:
    """The recipe plus what differs per cell."""
    return [
        *args.overrides,
        *missing_overrides(args, train),
        f"adapter.name={adapter}",
        f"seed={seed}",
        f"stage1_run={args.stage1_run}",
        f"output_dir={cell / 'run'}",
        "resume=auto",
    ]


def check_missing(args: argparse.Namespace) -> list[str | None]:
    """The train conditions (`[None]` without --train-missing) and the checks of the flags that go with them."""
    if args.train_missing is None:
        flags = (("--missing-rate", args.missing_rate), ("--missing-fill", args.missing_fill))
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise ValueError(f"{given[0]}: goes with --train-missing")
        return [None]
    args.missing_fill = args.missing_fill or "drop"
    trains: list[str | None] = list(parse_list(args.train_missing, "train-missing"))
    unknown = [t for t in trains if t not in TRAIN_MISSING]
    if unknown:
        raise ValueError(f"--train-missing: unknown condition '{unknown[0]}' (known: {', '.join(TRAIN_MISSING)})")
    if args.missing_rate is None or not 0 < args.missing_rate <= 1:
        raise ValueError(f"--missing-rate: --train-missing needs η in (0, 1], got {args.missing_rate}")
    return trains


def check_inputs(args: argparse.Namespace) -> tuple[list[str], list[str | None], list[int]]:
    """Every check that can fail on the user's input, before any training: one ValueError line each."""
    adapters, seeds = parse_list(args.adapters, "adapters"), parse_seeds(args.seeds)
    trains = check_missing(args)
    for flag in ("nproc", "batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: must be at least 1, got {getattr(args, flag)}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; name a directory for the grid")
    managed_keys = MANAGED + (MISSING_MANAGED if args.train_missing else ())
    managed = [o for o in args.overrides if o.split("=", 1)[0].strip() in managed_keys]
    if managed:
        raise ValueError(f"override '{managed[0]}': {', '.join(managed_keys)} are set per cell by compare.py")
    from pipeline.adapters import ADAPTERS
    from pipeline.config import load_config
    from pipeline.data.plan import resolve_all
    from pipeline.eval import BENCHMARKS
    from pipeline.eval.bench import check_media
    from pipeline.eval.grid import grid_conditions
    from pipeline.rundir import RunDir
    from pipeline.train.config import RunConfig
    from pipeline.train.stages import check_stage1_run

    unknown = [a for a in adapters if a not in ADAPTERS]
    if unknown:
        raise ValueError(f"--adapters: unknown adapter '{unknown[0]}' (registered: {', '.join(ADAPTERS)})")
    if args.bench not in BENCHMARKS:
        raise ValueError(f"--bench: unknown benchmark '{args.bench}' (known: {', '.join(sorted(BENCHMARKS))})")
    if not RunDir(args.stage1_run).config.is_file():
        raise ValueError(f"--stage1-run: {args.stage1_run} is not a run directory (no config.yaml)")
    check_stage1_run(args.stage1_run)
    for train in trains:  # each train condition's recipe loads and validates
        cfg = load_config(
            RunConfig, args.config, cell_overrides(args, args.out / "check", adapters[0], seeds[0], train)
        )
    if cfg.stage != 2:
        raise ValueError(f"--config: {args.config} is a stage-{cfg.stage} config; the comparison runs stage 2")
    resolve_all(cfg.data)
    items = BENCHMARKS[args.bench].load(args.data, args.media_root)
    if not items:
        raise ValueError(f"--data: {args.data} holds no {args.bench} questions")
    check_media(items, args.bench)
    if args.train_missing and grid_conditions(BENCHMARKS[args.bench].MODALITIES) == ["complete"]:
        raise ValueError(f"--train-missing: {args.bench} has neither audio nor visual input to test without")
    return adapters, trains, seeds


def check_finished_run(args: argparse.Namespace, cell: Path, adapter: str, seed: int, train: str | None) -> None:
    """A finished run is reused only if it was trained with the recipe asked for now."""
    import yaml

    from pipeline.config import load_config, to_dict
    from pipeline.rundir import RunDir
    from pipeline.train.config import RunConfig

    wanted = to_dict(load_config(RunConfig, args.config, cell_overrides(args, cell, adapter, seed, train)))
    saved = yaml.safe_load(RunDir(cell / "run").config.read_text())
    differ = sorted(_diff(wanted, saved))
    if differ:
        raise ValueError(
            f"{cell}: finished with a different recipe ({differ[0]}); pass other overrides, a new --out, "
            f"or delete the cell"
        )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {y!r} then, {x!r} now")
    return out


def train(args: argparse.Namespace, cell: Path, adapter: str, seed: int, condition: str | None) -> None:
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        str(args.nproc),
        "--master_port",
        str(free_port()),
        str(REPO / "launch" / "train.py"),
        "--config",
        str(args.config),
        *cell_overrides(args, cell, adapter, seed, condition),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = cell / "train.log"
    with log.open("a") as sink:
        code = subprocess.run(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{cell.name}: training failed (exit {code}); see {log}")


def free_port() -> int:
    """A free TCP port, so that two grids (or a grid and a test) on one machine do not collide on 29500."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluate(args: argparse.Namespace, cell: Path) -> None:
    """launch/eval.py into eval.partial/, renamed to eval/ when it is complete."""
    from pipeline.eval.runner import main as eval_main

    tmp = cell / "eval.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    media = ["--media-root", str(args.media_root)] if args.media_root else []
    grid = (
        ["--missing-grid", "--missing-rate", str(args.missing_rate), "--missing-fill", args.missing_fill]
        if args.train_missing
        else []
    )
    code = eval_main(
        [
            "--model",
            str(cell / "merged"),
            "--bench",
            args.bench,
            "--data",
            str(args.data),
            *media,
            "--out",
            str(tmp),
            "--batch-size",
            str(args.batch_size),
            "--max-new-tokens",
            str(args.max_new_tokens),
            *grid,
        ]
    )
    if code != 0:
        raise SystemExit(f"{cell.name}: eval failed (exit {code})")
    tmp.rename(cell / "eval")


def run_cell(args: argparse.Namespace, cell: Path, adapter: str, seed: int, train_missing: str | None) -> None:
    """Train, merge and evaluate one cell, skipping each step whose output is already there."""
    from pipeline.adapters import ADAPTERS
    from pipeline.merge import merge_run
    from pipeline.rundir import MERGE_MANIFEST, RunDir

    cell.mkdir(parents=True, exist_ok=True)
    if RunDir(cell / "run").finished():
        check_finished_run(args, cell, adapter, seed, train_missing)
    else:
        print(f"== {cell.name}: train ({args.nproc} ranks; log {cell / 'train.log'})", flush=True)
        train(args, cell, adapter, seed, train_missing)
    keep = args.keep_adapters or not ADAPTERS[adapter].mergeable
    manifest = cell / "merged" / MERGE_MANIFEST
    if manifest.is_file():
        if json.loads(manifest.read_text())["merged"] == keep:
            raise ValueError(
                f"{cell / 'merged'}: was {'merged' if keep else 'saved with the adapter kept'}, which "
                f"this run's --keep-adapters contradicts; delete it to redo the merge and eval"
            )
    else:
        print(f"== {cell.name}: {'save with the adapter kept' if keep else 'merge'}", flush=True)
        merge_run(cell / "run", cell / "merged", keep_adapters=keep)
    if not (cell / "eval" / "metrics.json").is_file():
        print(f"== {cell.name}: eval {args.bench}", flush=True)
        evaluate(args, cell)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("config", "stage1_run", "data", "media_root", "out"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    try:
        adapters, trains, seeds = check_inputs(args)
    except (ValueError, OSError) as exc:  # ConfigError and BenchError are ValueErrors; OSError: unreadable input
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from pipeline.compare import table as compare
    from pipeline.eval import BENCHMARKS

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cells, grid_cells = [], []
    try:
        for adapter in adapters:
            for train_missing in trains:
                for seed in seeds:
                    cell = args.out / cell_name(adapter, train_missing, seed)
                    run_cell(args, cell, adapter, seed, train_missing)
                    label = adapter if train_missing is None else f"{adapter} ({train_missing})"
                    cells.append(compare.read_cell(cell, label, seed))
                    if train_missing is not None:
                        grid_cells.append(compare.read_grid_cell(cell, adapter, seed))
    except (ValueError, OSError) as exc:  # OSError: a read-only or full disk under --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    points = BENCHMARKS[args.bench].POINT_METRICS
    rows = compare.aggregate(cells)
    table = compare.markdown(rows, args.bench, points)
    (args.out / "comparison.md").write_text(table)
    compare.write_csv(rows, args.out / "comparison.csv")
    print(f"\n{table}\nwrote {args.out / 'comparison.md'} and {args.out / 'comparison.csv'}")
    if grid_cells:
        grid_rows = compare.aggregate_grid(grid_cells)
        # a benchmark with point metrics (MME) leads with points; the others with a fraction, shown in %
        table = compare.grid_markdown(grid_rows, args.bench, 1 if points else 100)
        (args.out / "comparison_missing.md").write_text(table)
        compare.write_grid_csv(grid_rows, args.out / "comparison_missing.csv")
        print(f"\n{table}\nwrote {args.out / 'comparison_missing.md'} and {args.out / 'comparison_missing.csv'}")
    return 0
