"""Evaluate a merged checkpoint on one benchmark, or score an existing predictions file without a model.

    python launch/eval.py --model CKPT_DIR --bench {mmbench,pope,music_avqa,ave,mme} --data PATH [--media-root DIR] \\
        [--out DIR] [--batch-size B] [--max-new-tokens N] [--missing audio|visual|both --missing-rate R [--seed S]]
    torchrun --nproc_per_node N launch/eval.py ...   (or deepspeed --num_gpus N): batches spread over the ranks,
                                                      predictions merged on rank 0, identical to one process
    python launch/eval.py --bench B --data PATH --predictions FILE [--out DIR]

Writes predictions.jsonl, metrics.json (fractions) and results.md (the table, percentages) into --out. Every check
on the inputs (files, columns, media paths, prediction ids, the checkpoint directory) runs before a model is loaded
or a process group started, and fails with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.eval import BENCHMARKS  # noqa: E402
from pipeline.eval.bench import BenchError, Item, assign_conditions  # noqa: E402
from pipeline.eval.report import markdown, prediction_lines, read_predictions, score_conditions, write  # noqa: E402

CONFIG_FILE = "avllm.json"  # pipeline.model.avllm.CONFIG_FILE, without importing torch before the checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's official file or folder")
    parser.add_argument("--model", type=Path, help="checkpoint directory (AVLLM.save_pretrained / merged)")
    parser.add_argument("--predictions", type=Path, help="score this predictions.jsonl instead of running a model")
    parser.add_argument("--media-root", type=Path, help="where the media are (default: next to --data)")
    parser.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder (default: eval_out)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--missing", choices=("audio", "visual", "both"), help="drop this modality for a subset")
    parser.add_argument("--missing-rate", type=float, help="share of questions (groups) that lose it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the missing-modality subset")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if (args.model is None) == (args.predictions is None):
        raise BenchError("give exactly one of --model (run the model) and --predictions (score a file)")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise BenchError("--batch-size and --max-new-tokens must be at least 1")
    if (args.missing is None) != (args.missing_rate is None):
        raise BenchError("--missing and --missing-rate go together")
    if args.missing is not None:
        if args.predictions is not None:
            raise BenchError("--missing runs the model; a predictions file carries each item's condition itself")
        if not 0 < args.missing_rate <= (0.5 if args.missing == "both" else 1):
            raise BenchError(f"--missing-rate must be in (0, {0.5 if args.missing == 'both' else 1}], "
                             f"got {args.missing_rate}")
        lacking = {"audio", "visual"} - BENCHMARKS[args.bench].MODALITIES if args.missing == "both" else \
            {args.missing} - BENCHMARKS[args.bench].MODALITIES
        if lacking:
            raise BenchError(f"--missing {args.missing}: {args.bench} has no {' or '.join(sorted(lacking))} input")
    if args.model is not None and not (args.model / CONFIG_FILE).is_file():
        raise BenchError(f"{args.model}: not an AVLLM checkpoint (no {CONFIG_FILE})")


def run_model(args: argparse.Namespace, items: list[Item], conditions: dict[str, str]) -> list[str] | None:
    """Generated texts aligned with `items` on rank 0 (None on the other ranks)."""
    import torch
    import torch.distributed as dist

    from pipeline.eval.generate import generate
    from pipeline.model.avllm import AVLLM

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    owned = world > 1 and not dist.is_initialized()  # a caller's group (several evals in one launch) is left alone
    if owned:
        dist.init_process_group("gloo")  # only Python objects are exchanged, on CPU, whatever the device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")
    model = AVLLM.from_pretrained(args.model).eval().to(device)
    texts = generate(model, items, conditions, args.batch_size, args.max_new_tokens, rank, world, desc=args.bench)
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object(texts, parts, dst=0)
        if owned:
            dist.destroy_process_group()
        if rank != 0:
            return None
        texts = {k: v for part in parts for k, v in part.items()}
    return [texts[item.key] for item in items]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    module = BENCHMARKS[args.bench]
    try:
        check_args(args)
        items = module.load(args.data, args.media_root)
        if not items:
            raise BenchError(f"{args.data}: no {args.bench} questions")
        if args.predictions is not None:
            texts, conditions = read_predictions(args.predictions, items, module.ID_FIELDS)
        else:
            conditions = assign_conditions(items, args.missing, args.missing_rate or 0.0, args.seed)
    except BenchError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.model is not None:
        try:
            texts = run_model(args, items, conditions)
        except BenchError as exc:  # a media file that exists but does not decode
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if texts is None:
            return 0
    result = score_conditions(args.bench, module, items, texts, conditions)
    write(args.out, prediction_lines(items, texts, conditions), result, module.POINT_METRICS)
    print(markdown(result, module.POINT_METRICS), end="")
    print(f"wrote {args.out}/predictions.jsonl, metrics.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
