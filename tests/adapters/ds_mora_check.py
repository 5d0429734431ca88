"""Run by test_mora.py on 2 ranks: 10 ZeRO-3 steps (fp32, CPU, gloo, every adapter tensor partitioned) of MoRA on
all three towers of the tiny composed model, each rank on two of the mixed samples. Usage: MODEL_YAML OUT_JSON;
rank 0 writes the rank-averaged loss per step and how far each kind of MoRA parameter moved."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parents[2])]

from pipeline.adapters import AdapterConfig, adapter_parameters, attach, mark_trainable  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.model.avllm import AVLLM  # noqa: E402
from tests.conftest import ModelOnly  # noqa: E402
from tests.model.conftest import mixed_samples  # noqa: E402
from pipeline.train.loop import init_distributed  # noqa: E402

CFG = AdapterConfig(name="mora", rank=4, scope=["vision", "audio", "llm"], targets=["q_proj", "o_proj", "out_proj"])
STEPS = 10


def main() -> None:
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))  # gloo, without the 30 s JIT compile of the shm op
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same fresh projectors on both ranks
    model = AVLLM.from_config(load_config(ModelOnly, sys.argv[1], []).model)
    attach(model, CFG)
    mark_trainable(model)  # the adapter only: the fresh projectors stay frozen
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in adapter_parameters(model).items()}
    config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(params, lr=2e-2), config=config)
    batch = model.build_processor()(mixed_samples()[2 * rank : 2 * rank + 2])
    losses = []
    for _ in range(STEPS):
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    named = adapter_parameters(engine.module)
    moved: dict[str, float] = {}
    with deepspeed.zero.GatheredParameters(list(named.values())):
        for n, p in named.items():
            kind = n.rsplit(".", 1)[1]
            moved[kind] = max(moved.get(kind, 0.0), (p - before[n]).abs().max().item())
    if rank == 0:
        Path(sys.argv[2]).write_text(json.dumps({"losses": losses, "moved": moved}))


if __name__ == "__main__":
    main()
