"""Run by test_delo.py on 2 ranks: ten DeLo steps of a tiny Llama under DeepSpeed ZeRO-3 (CPU, gloo), task 1 active
and task 0 frozen, on a fixed batch with the alignment loss added. Writes the first and last loss and whether task
0's pools stayed bit-equal to the json file named on the command line (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2])]

from adapter_helpers import VOCAB, leave, modality_ids, randomize_adapters, tiny_llama  # noqa: E402

from pipeline.adapters import (  # noqa: E402
    AdapterConfig,
    adapter_layers,
    attach,
    aux_loss,  # noqa: E402
    mark_trainable,
)
from pipeline.adapters import start_task  # noqa: E402
from pipeline.modality import ModalityContext  # noqa: E402
from pipeline.train.loop import close_distributed, init_distributed  # noqa: E402

STEPS = 10


def main() -> None:
    torch.set_num_threads(1)
    init_distributed(torch.device("cpu"))  # gloo, without the 30 s JIT compile of the shm op
    rank = dist.get_rank()
    model, ctx = tiny_llama(), ModalityContext()
    attach(model, AdapterConfig(name="delo", rank=2, alpha=8, options={"tasks": 2, "pool_size": 4}), ctx)
    randomize_adapters(model)
    mark_trainable(model)
    start_task(model, 1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".pool_a0" in n or ".pool_b0" in n}
    params = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=5e-2), config=config)
    tokens = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))[2 * rank : 2 * rank + 2]
    ctx.set(modality_ids(4, 16)[2 * rank : 2 * rank + 2])
    losses = []
    for _ in range(STEPS):
        loss = engine(input_ids=tokens, labels=tokens).loss
        engine.backward(loss + aux_loss(engine.module))
        engine.step()
        losses.append(loss.item())
    named = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([named[n] for n in frozen]):
        unchanged = all(torch.equal(named[n].detach(), v) for n, v in frozen.items())
    assert len(adapter_layers(engine.module)) == 14
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps({"first": losses[0], "last": losses[-1], "losses": losses,
                                                 "task0_unchanged": unchanged}))
    close_distributed()


if __name__ == "__main__":
    main()
    leave()
