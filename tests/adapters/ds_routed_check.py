"""Run by test_routed.py on 2 ranks: each routed adapter (uni-modal LoRA, MokA, LoRAMoE with its balance loss,
HydraLoRA) trains a tiny Llama for 10 ZeRO-3 steps (fp32, CPU, gloo) on a fixed mixed-modality batch. Writes each
method's loss curve (mean over ranks) to the json file named on the command line (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2])]

from adapter_helpers import VOCAB, modality_ids, tiny_llama  # noqa: E402
from pipeline.adapters import AdapterConfig, attach  # noqa: E402
from pipeline.adapters import aux_loss  # noqa: E402
from pipeline.model.modality import Modality, ModalityContext  # noqa: E402
from pipeline.train.loop import init_distributed  # noqa: E402

METHODS = {"unimodal_lora": {}, "moka": {}, "loramoe": {"balance_coef": 0.01}, "hydralora": {}}
STEPS = 10
TOKENS = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(3))
IDS = modality_ids(4, 16)
QUESTION = (IDS == int(Modality.TEXT)) & (torch.arange(16) >= 10)


def train(name: str, options: dict) -> list[float]:
    model, ctx = tiny_llama(), ModalityContext()
    attach(model, AdapterConfig(name=name, rank=4, options=options), ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=1e-2), config=config)
    rows = slice(2 * dist.get_rank(), 2 * dist.get_rank() + 2)
    tokens, ids = TOKENS[rows], IDS[rows]
    mask = (ids != int(Modality.PAD)).long()
    labels = tokens.masked_fill(mask == 0, -100)
    losses = []
    for _ in range(STEPS):
        ctx.set(ids, QUESTION[rows])
        loss = engine(input_ids=tokens, attention_mask=mask, labels=labels).loss
        engine.backward(loss + aux_loss(engine.module))
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
    return losses


def main() -> None:
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))  # gloo, without the 30 s JIT compile of the shm op
    report = {name: train(name, options) for name, options in METHODS.items()}
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
