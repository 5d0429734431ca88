"""Run by test_deepspeed.py on 2 ranks: one IMoD step under DeepSpeed ZeRO-2 and ZeRO-3 (fp32, CPU, gloo, 2 micro-batches
per rank) must update A exactly as one process does on the whole 4-sample batch with the task loss plus the
constraints. Writes the largest deviation per stage to the json file named on the command line (rank 0)."""

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

from pipeline.adapters import AdapterConfig, adapter_parameters, attach  # noqa: E402
from pipeline.modality import ModalityContext  # noqa: E402
from pipeline.train.loop import close_distributed, init_distributed  # noqa: E402

CFG = AdapterConfig(name="imod", rank=4, options={"lambda1": 0.01, "lambda2": 0.5})  # both terms ~ task size
TOKENS = torch.randint(0, VOCAB, (4, 20), generator=torch.Generator().manual_seed(3))
IDS = modality_ids(4, 20, pad=False)  # equal token counts per micro-batch: the mean losses then average exactly


def build(cfg: AdapterConfig = CFG):
    model = tiny_llama()
    ctx = ModalityContext()
    attach(model, cfg, ctx)
    randomize_adapters(model)
    return model, ctx


def reference(cfg: AdapterConfig = CFG) -> dict[str, torch.Tensor]:
    """One process, whole batch, SGD lr 1: A - grad, with the injected sums of the whole batch."""
    model, ctx = build(cfg)
    ctx.set(IDS)
    model(input_ids=TOKENS, labels=TOKENS).loss.backward()
    return {n: (p - p.grad).detach() for n, p in adapter_parameters(model).items()}


def deepspeed_step(stage: int) -> dict[str, torch.Tensor]:
    model, ctx = build()
    params = [p for p in model.parameters() if p.requires_grad]
    config = {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "train_batch_size": 4,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed 0.19 clips at 1.0 unless told otherwise
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(params, lr=1.0), config=config)
    rank = dist.get_rank()
    for micro in range(2):
        row = 2 * rank + micro
        ctx.set(IDS[row : row + 1])
        loss = engine(input_ids=TOKENS[row : row + 1], labels=TOKENS[row : row + 1]).loss
        engine.backward(loss)
        engine.step()
    named = adapter_parameters(engine.module)
    with deepspeed.zero.GatheredParameters(list(named.values()), enabled=stage == 3):
        return {n: p.detach().clone() for n, p in named.items()}


def main() -> None:
    torch.set_num_threads(1)
    expected = reference()  # before the process group exists: a plain single process
    without = reference(AdapterConfig(name="imod", rank=4, options={"lambda1": 0.0, "lambda2": 0.0}))
    injected = max((expected[n] - without[n]).abs().max().item() for n in expected)
    init_distributed(torch.device("cpu"))  # gloo, without the 30 s JIT compile of the shm op
    report = {}
    for stage in (2, 3):
        got = deepspeed_step(stage)
        assert got.keys() == expected.keys()
        diff = max((expected[n] - got[n]).abs().max().item() for n in got)
        report[f"zero{stage}"] = {"max_abs_diff": diff, "injection_effect": injected}
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    close_distributed()


if __name__ == "__main__":
    main()
    leave()
