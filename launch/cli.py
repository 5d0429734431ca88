"""`avtrain`: one command for every entry point (`pip install` puts it on PATH; `python -m launch.cli` is the same).

    avtrain train --config C [key=value ...]       one process (a single GPU, or CPU); for several ranks:
        deepspeed --num_gpus N $(which avtrain) train --config C ...
        torchrun --nproc_per_node N $(which avtrain) train --config C ...
        (or, from a checkout, `deepspeed launch/train.py ...` and `torchrun launch/train.py ...`, as before)
    avtrain merge | eval | compare | demo | shard | synthetic | tiny  ...

`avtrain <command> --help` shows a command's own options. Each command is the `main(argv)` of its module; the
launchers' `--local_rank=N` (put before the command) is accepted and left to the LOCAL_RANK variable they also set.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name: (module whose main(argv) runs it, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("launch.train", "train stage 1 or 2, or a continual task sequence (DeepSpeed)"),
    "merge": ("launch.merge", "fold a run's adapter into a standalone checkpoint"),
    "eval": ("launch.eval", "evaluate a checkpoint on a benchmark, or score a predictions file"),
    "compare": ("launch.compare", "train, merge and evaluate a grid of adapters and seeds, then tabulate"),
    "demo": ("launch.demo", "the end-to-end demo on synthetic data with tiny models"),
    "shard": ("data_prep.shard", "convert a raw dataset into WebDataset shards"),
    "synthetic": ("data_prep.synthetic", "write synthetic raw datasets in the real formats"),
    "tiny": ("pipeline.testing.tiny", "write tiny random-init model components"),
}


def parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="avtrain",
        description=__doc__,
        epilog=f"commands:\n{table}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("command", choices=list(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments (see avtrain COMMAND --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(COMMANDS[args.command][0])
    sys.argv[0] = f"avtrain {args.command}"  # what the command's --help and usage lines show
    return module.main(args.args) or 0


if __name__ == "__main__":
    sys.exit(main())
