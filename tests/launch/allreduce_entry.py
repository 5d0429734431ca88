"""Stand-in for launch/train.py in the SLURM tests: same command line (`--config FILE [key=value ...]`).

Every rank inits DeepSpeed's distributed backend (gloo on CPU), checks the world size and that ranks are distinct,
all-reduces rank+1, then trains a tiny linear model for `steps` SGD steps on its own shard of a fixed synthetic
batch, averaging gradients with all_reduce. Rank 0 writes `result.json` to `out_dir`. The config is JSON:
{"world_size": 2, "steps": 3, "lr": 0.1, "seed": 0}; overrides replace its keys (out_dir=DIR is required).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist


def parse() -> dict:
    """Config JSON with key=value overrides applied (values parsed as JSON when they parse, else kept as text)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = json.loads(Path(args.config).read_text())
    for item in args.overrides:
        key, _, value = item.partition("=")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    return cfg


def main() -> None:
    cfg = parse()
    # Skip the 30 s JIT compile of the shared-memory comm op; gloo alone is all a CPU run needs.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == cfg["world_size"], f"world size {world}, expected {cfg['world_size']}"

    # Which node each rank ran on (SLURM_NODEID reaches the ranks through srun and the deepspeed launcher).
    placement = [None] * world
    dist.all_gather_object(placement, {"rank": rank, "node": os.environ.get("SLURM_NODEID")})
    assert sorted(p["rank"] for p in placement) == list(range(world)), f"ranks not distinct: {placement}"

    value = torch.tensor([rank + 1.0])
    dist.all_reduce(value)
    assert value.item() == world * (world + 1) / 2, value

    torch.manual_seed(cfg["seed"])
    model = torch.nn.Linear(4, 1)
    x = torch.randn(8 * world, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.25
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    losses = []
    for _ in range(cfg["steps"]):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xs), ys)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / world)

    if rank == 0:
        out = Path(cfg["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        result = {
            "world_size": world,
            "allreduce": value.item(),
            "placement": placement,
            "losses": losses,
            "weight": model.weight.detach().flatten().tolist(),
            "bias": model.bias.detach().tolist(),
        }
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
