"""Fold a trained run's adapter into a standalone checkpoint.

    python launch/merge.py --run RUN_DIR --out OUT_DIR [--dtype bf16|fp16|fp32] [--force] [--keep-adapters]
                           [--checkpoint step-N|DIR] [--max-shard-size-mb 2048]

Base model paths come from RUN_DIR/config.yaml (its `model:` section), the trained tensors from RUN_DIR/final (or the
checkpoint's export/). OUT_DIR loads with `pipeline.adapters.io.load_model(OUT_DIR)` (a merged one also with
`AVLLM.from_pretrained`), and OUT_DIR/llm with stock `AutoModelForCausalLM.from_pretrained`. A non-mergeable adapter
is refused; `--keep-adapters` ships it unmerged. The output is written to `.OUT_DIR.partial` beside OUT_DIR and
renamed at the end; what a killed merge left there is removed by the next one. `--out` may never be, contain or lie
inside the run or a base model directory, and `--force` replaces only an earlier merge's output. See
pipeline/merge.py.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.merge import merge_run  # noqa: E402
from pipeline.storage import WriteError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (config.yaml, final/)")
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --force)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="output dtype (default: the run's)")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing OUT_DIR that an earlier merge wrote (never the run)"
    )
    parser.add_argument("--keep-adapters", action="store_true", help="keep the adapter unmerged, as modules")
    parser.add_argument("--checkpoint", help="a checkpoint (step-N or its directory) instead of final/")
    parser.add_argument("--max-shard-size-mb", type=int, default=2048, help="safetensors shard size")
    args = parser.parse_args(argv)
    if args.max_shard_size_mb < 1:
        parser.error(f"--max-shard-size-mb must be at least 1, got {args.max_shard_size_mb}")
    try:
        out = merge_run(
            args.run,
            args.out,
            args.dtype,
            args.force,
            args.keep_adapters,
            args.checkpoint,
            args.max_shard_size_mb * 2**20,
        )
    except WriteError as exc:  # a full disk or read-only --out (an OSError): nothing half-written is left
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:  # bad input, a missing or unreadable file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged checkpoint: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
