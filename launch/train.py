"""Train one stage.

    deepspeed --num_gpus N launch/train.py --config configs/demo/stage2.yaml [--deepspeed configs/ds/zero3.json] \\
        [key=value ...]
    deepspeed --num_gpus N launch/train.py --config configs/demo/continual.yaml   (a `continual.tasks` sequence:
        each task trained after the previous one, all seen tasks evaluated after each; see pipeline/continual.py)
    torchrun --nproc_per_node N launch/train.py --config ... (works too)
    python launch/train.py --config C --estimate-memory [--gpus-per-node 8 --nodes 2]

Exit status: 0 done; 1 no intact checkpoint to resume from, or no room to write (one line naming the directory and the
space needed); 2 bad input (before any process group starts); 3 stopped by non-finite losses (checkpoint saved);
4 a rank has no decodable data left (checkpoint saved; one line names the rank, its shards and its skip counts); 75
stopped by SIGTERM or SIGUSR1 after a complete checkpoint (rerun with resume=auto; train.sbatch requeues).

Every check that can fail on the user's input (config keys and types, paths, shards, the stage-1 run, batch sizes
against the DeepSpeed JSON) runs before any process group starts.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pipeline.config import load_config  # noqa: E402
from pipeline.data.plan import resolve_all  # noqa: E402
from pipeline.train.config import RunConfig  # noqa: E402
from pipeline.train.ds_config import resolve_ds_config  # noqa: E402
from pipeline.train.output_dir import check_output_dir  # noqa: E402
from pipeline.train.stages import check_model, check_stage1_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON (same as the config key deepspeed=...)")
    parser.add_argument("--estimate-memory", action="store_true", help="print DeepSpeed's memory estimate and exit")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="for --estimate-memory (default: visible)")
    parser.add_argument("--nodes", type=int, default=1, help="for --estimate-memory")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. adapter.name=imod")
    args = parser.parse_intermixed_args(argv)  # overrides may stand on either side of --deepspeed etc.
    overrides = list(args.overrides) + ([f"deepspeed={args.deepspeed}"] if args.deepspeed else [])
    world = int(os.environ.get("WORLD_SIZE", 1))
    try:
        cfg = load_config(RunConfig, args.config, overrides)
        if args.estimate_memory:
            import torch

            from pipeline.train.memory import estimate

            gpus = args.gpus_per_node or max(torch.cuda.device_count(), 1)
            print(estimate(cfg, resolve_ds_config(cfg, gpus * args.nodes), gpus, args.nodes))
            return 0
        if cfg.continual.tasks:
            from pipeline.continual import check_tasks

            check_tasks(cfg)
        else:
            resolve_all(cfg.data)
            check_output_dir(cfg)
        if cfg.stage == 2:
            check_stage1_run(cfg.stage1_run)
        resolve_ds_config(cfg, world)
        if not cfg.continual.tasks:  # a sequence checks its adapter, sized for its tasks, in check_tasks
            check_model(cfg)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError; OSError: an unreadable input
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from pipeline.continual import run_continual
    from pipeline.storage import WriteError
    from pipeline.train.checkpoint import CheckpointError
    from pipeline.train.loop import OutOfData, TrainingStopped, close_distributed, collective_timeout, train
    from pipeline.train.preempt import PREEMPTED_EXIT, Preempted

    try:
        run_dir = run_continual(cfg) if cfg.continual.tasks else train(cfg)
    except TrainingStopped as exc:  # every rank stops at the same step
        close_distributed()
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except OutOfData as exc:  # raised on every rank alike, after a complete checkpoint
        close_distributed()
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 4
    except CheckpointError as exc:  # raised on every rank alike
        close_distributed()
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except WriteError as exc:  # on the rank that failed, while the others wait in a collective: leave at once
        print(f"error: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    except Preempted as exc:  # SIGTERM/SIGUSR1: every rank stops at the same step, after a complete checkpoint
        close_distributed()
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"preempted: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT
    except RuntimeError as exc:  # a peer that died or hangs: one line, then leave without the collective teardown
        message = collective_timeout(exc, cfg)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)
    close_distributed()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # without interpreter finalization: see pipeline.train.loop.close_distributed
