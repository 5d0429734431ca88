"""The evaluation runner behind `launch/eval.py`: evaluate a shipped checkpoint on one benchmark, or score an existing
predictions file without a model.

    python launch/eval.py --model CKPT_DIR --bench {mmbench,pope,music_avqa,ave,mme} --data PATH [--media-root DIR] \\
        [--out DIR] [--batch-size B] [--max-new-tokens N] [--missing audio|visual|both --missing-rate R [--seed S]]
        [--missing-grid --missing-rate η [--seed S]] [--missing-fill drop|placeholder]
    torchrun --nproc_per_node N launch/eval.py ...   (or deepspeed --num_gpus N): batches spread over the ranks,
                                                      predictions merged on rank 0, identical to one process
    python launch/eval.py --bench B --data PATH --predictions FILE [--out DIR]

`--model` is a checkpoint directory or a Hub id (resolved through the Hugging Face cache, pipeline/model/hub.py).
Scoring `--predictions` reads ids and golds only: the media need not be on disk; they are checked when a model runs.
Writes predictions.jsonl, metrics.json (fractions) and results.md (the table, percentages) into --out; metrics.json's
`model` names the weights a model run evaluated (pipeline/eval/provenance.py: the checkpoint's Hub snapshot, and for a
merge's output its merge.json's source run, adapter and base components with their snapshot hashes).
`--missing` mixes conditions inside one pass (a seeded share of the questions loses the modality) and scores each.
`--missing-grid` runs one pass per test condition (complete, audio-missing, visual-missing, mixed at η; see
pipeline/eval/grid.py) and writes predictions-<condition>.jsonl, metrics.json (every metric per condition and its
relative drop from complete) and results.md (a row per condition, naming the checkpoint's train condition).
`--missing-fill placeholder` feeds neutral inputs (black frames, silence) instead of dropping the modality. Every check
on the inputs (files, columns, media paths, prediction ids, the checkpoint directory) runs before a model is loaded
or a process group started, and fails with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from types import ModuleType

from pipeline.eval import BENCHMARKS, grid
from pipeline.eval.bench import BenchError, Item, assign_conditions, check_media
from pipeline.eval.provenance import provenance
from pipeline.eval.report import markdown, prediction_lines, read_predictions, score_conditions, write
from pipeline.model.hub import ModelRefError, resolve
from pipeline.storage import WriteError, check_space, write_failed

OUT_BYTES = 2**20  # room --out needs for predictions and metrics, checked before the model runs
CONFIG_FILE = "avllm.json"  # pipeline.model.avllm.CONFIG_FILE, without importing torch before the checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch/eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bench", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's official file or folder")
    parser.add_argument(
        "--model",
        help="checkpoint: a directory (AVLLM.save_pretrained / merged) or a Hugging Face Hub id org/name[@rev]",
    )
    parser.add_argument("--predictions", type=Path, help="score this predictions.jsonl instead of running a model")
    parser.add_argument("--media-root", type=Path, help="where the media are (default: next to --data)")
    parser.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder (default: eval_out)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--missing", choices=("audio", "visual", "both"), help="drop this modality for a subset")
    parser.add_argument("--missing-grid", action="store_true", help="one pass per missing-modality test condition")
    parser.add_argument("--missing-rate", type=float, help="share of questions (groups) losing it (grid: η of mixed)")
    parser.add_argument(
        "--missing-fill",
        choices=("drop", "placeholder"),
        default="drop",
        help="drop the lost modality (default) or feed a neutral input in its place",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the missing-modality subset")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if (args.model is None) == (args.predictions is None):
        raise BenchError("give exactly one of --model (run the model) and --predictions (score a file)")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise BenchError("--batch-size and --max-new-tokens must be at least 1")
    if args.missing_grid:
        check_grid(args)
    elif (args.missing is None) != (args.missing_rate is None):
        raise BenchError("--missing and --missing-rate go together")
    if args.missing is not None:
        if args.predictions is not None:
            raise BenchError("--missing runs the model; a predictions file carries each item's condition itself")
        if not 0 < args.missing_rate <= (0.5 if args.missing == "both" else 1):
            raise BenchError(
                f"--missing-rate must be in (0, {0.5 if args.missing == 'both' else 1}], got {args.missing_rate}"
            )
        lacking = (
            {"audio", "visual"} - BENCHMARKS[args.bench].MODALITIES
            if args.missing == "both"
            else {args.missing} - BENCHMARKS[args.bench].MODALITIES
        )
        if lacking:
            raise BenchError(f"--missing {args.missing}: {args.bench} has no {' or '.join(sorted(lacking))} input")
    if args.model is not None:
        try:
            snapshot = resolve(args.model, "--model")
            args.model, args.model_ref = snapshot.path, snapshot.pinned
        except ModelRefError as exc:
            raise BenchError(str(exc)) from None
        if not (args.model / CONFIG_FILE).is_file():
            raise BenchError(f"{args.model}: not an AVLLM checkpoint (no {CONFIG_FILE})")
    if args.out.exists() and not args.out.is_dir():
        raise BenchError(f"--out {args.out} is a file; name a directory for the results")


def check_grid(args: argparse.Namespace) -> None:
    if args.missing is not None:
        raise BenchError("--missing-grid runs every condition; it does not take --missing")
    if args.predictions is not None:
        raise BenchError("--missing-grid runs the model once per test condition; it cannot score --predictions")
    if args.missing_rate is None or not 0 < args.missing_rate <= 1:
        raise BenchError(
            f"--missing-grid needs --missing-rate in (0, 1] (η of the mixed condition), got {args.missing_rate}"
        )
    if grid.grid_conditions(BENCHMARKS[args.bench].MODALITIES) == ["complete"]:
        raise BenchError(f"--missing-grid: {args.bench} has neither audio nor visual input to take away")


def plan(args: argparse.Namespace, items: list[Item]) -> dict[str, dict[str, str]]:
    """The model's passes: {name: each group's condition}; one per test condition with --missing-grid, else one."""
    if args.missing_grid:
        return {
            test: grid.item_conditions(test, items, args.missing_rate, args.seed)
            for test in grid.grid_conditions(BENCHMARKS[args.bench].MODALITIES)
        }
    return {args.bench: assign_conditions(items, args.missing, args.missing_rate or 0.0, args.seed)}


def run_model(
    args: argparse.Namespace, items: list[Item], passes: dict[str, dict[str, str]]
) -> dict[str, list[str]] | None:
    """{pass: generated texts aligned with `items`} on rank 0 (None on the other ranks); the model loads once."""
    import torch
    import torch.distributed as dist

    from pipeline.adapters.io import load_model
    from pipeline.eval.generate import generate

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    owned = world > 1 and not dist.is_initialized()  # a caller's group (several evals in one launch) is left alone
    if owned:
        dist.init_process_group("gloo")  # only Python objects are exchanged, on CPU, whatever the device
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    model = load_model(args.model).eval().to(device)
    out: dict[str, list[str]] = {}
    for name, conditions in passes.items():
        texts = generate(
            model,
            items,
            conditions,
            args.batch_size,
            args.max_new_tokens,
            rank,
            world,
            desc=name,
            fill=args.missing_fill,
        )
        if world > 1:
            parts: list[dict[str, str] | None] | None = [None] * world if rank == 0 else None
            dist.gather_object(texts, parts, dst=0)
            texts = {k: v for part in parts or [] if part for k, v in part.items()}
        if rank == 0:
            out[name] = [texts[item.key] for item in items]
    if owned:
        dist.destroy_process_group()
    return out if rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    module = BENCHMARKS[args.bench]
    outputs: dict[str, list[str]] | None = None
    try:
        check_args(args)
        items = module.load(args.data, args.media_root)
        if not items:
            raise BenchError(f"{args.data}: no {args.bench} questions")
        if args.predictions is not None:
            texts, conditions = read_predictions(args.predictions, items, module.ID_FIELDS)
            outputs, passes = {args.bench: texts}, {args.bench: conditions}
        else:
            check_media(items, args.bench)
            passes = plan(args, items)
        if rank == 0:  # a full disk or read-only --out fails now, not after the model has run
            check_space(args.out, OUT_BYTES)
    except (BenchError, WriteError, OSError) as exc:  # OSError: an input that cannot be read
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.model is not None:
        try:
            outputs = run_model(args, items, passes)
        except (BenchError, OSError) as exc:  # a media file that exists but does not decode, an unreadable model
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if outputs is None:  # a rank other than 0: rank 0 scores and writes
        return 0
    try:
        if args.missing_grid:
            return write_grid(args, module, items, outputs, passes)
        texts, conditions = outputs[args.bench], passes[args.bench]
        result = score_conditions(args.bench, module, items, texts, conditions)
        if args.model is not None:
            result["model"] = provenance(args.model_ref, args.model)
        write(args.out, prediction_lines(items, texts, conditions), result, module.POINT_METRICS)
    except OSError as exc:
        failure = write_failed(args.out, exc)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print(markdown(result, module.POINT_METRICS), end="")
    print(f"wrote {args.out}/predictions.jsonl, metrics.json, results.md")
    return 0


def write_grid(
    args: argparse.Namespace,
    module: ModuleType,
    items: list[Item],
    outputs: dict[str, list[str]],
    passes: dict[str, dict[str, str]],
) -> int:
    header = {
        "benchmark": args.bench,
        "train_condition": grid.train_condition(args.model),
        "model": provenance(args.model_ref, args.model),
        "missing_rate": args.missing_rate,
        "fill": args.missing_fill,
        "seed": args.seed,
    }
    result = grid.score_grid(module, items, outputs, passes, header)
    lines = {test: prediction_lines(items, outputs[test], passes[test]) for test in passes}
    grid.write(args.out, lines, result, module.POINT_METRICS)
    print(grid.markdown(result, module.POINT_METRICS), end="")
    print(f"wrote {args.out}/predictions-<condition>.jsonl, metrics.json, results.md")
    return 0
