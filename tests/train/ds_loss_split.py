"""Run by test_loss_split.py with torchrun on 1 or 2 ranks: one optimizer step of the training loop's loss
normalisation (`window_items`, then `forward_backward` per micro-batch, chunked loss) under DeepSpeed ZeRO-2 with
SGD lr 1, for every (ranks x micro-batches) split of the same 8 samples that fits the world size, padded and packed.
The update must equal the gradient of one process on the whole batch (mean label-token loss, plain loss).

Usage: MODEL_YAML OUT_JSON. Rank 0 writes {"<world>x<gas>/<layout>": max |update - reference gradient|, ...,
"reference_grad_max": ..., "per_micro_mean_diff": the deviation of the old per-micro-batch-mean normalisation}."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parents[2])]

from pipeline.adapters import AdapterConfig, attach, mark_trainable  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.model.avllm import AVLLM  # noqa: E402
from pipeline.train.loop import close_distributed, forward_backward, init_distributed, window_items  # noqa: E402
from tests.adapters.adapter_helpers import leave, randomize_adapters  # noqa: E402
from tests.conftest import ModelOnly  # noqa: E402
from tests.model.conftest import mixed_samples  # noqa: E402

SAMPLES = 8
CHUNK = 16  # label positions per chunk: several chunks per micro-batch


def build(model_yaml: str) -> AVLLM:
    torch.manual_seed(0)
    model = AVLLM.from_config(load_config(ModelOnly, model_yaml, []).model)
    attach(model, AdapterConfig(name="lora", rank=4, scope=["llm"]))
    randomize_adapters(model)
    mark_trainable(model, ["projectors.*"])
    return model


def micro_batches(model: AVLLM, world: int, gas: int, rank: int, packed: bool) -> list[dict]:
    processor = model.build_processor()
    encoded = [processor.encode(s) for s in mixed_samples() + mixed_samples()[::-1]]
    size = SAMPLES // (world * gas)
    parts = [encoded[(rank * gas + m) * size : (rank * gas + m + 1) * size] for m in range(gas)]
    budget = max(len(e.input_ids) for e in encoded) + 60
    return [processor.pack(p, budget) if packed else processor.collate(p) for p in parts]


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def reference(model_yaml: str) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean label-token loss of all samples (one process, padded, plain loss), and how far the
    old normalisation (mean per micro-batch, averaged over 4 micro-batches) is from it."""
    model = build(model_yaml)
    model(**micro_batches(model, 1, 1, 0, False)[0]).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    for batch in micro_batches(model, 1, 4, 0, False):
        (model(**batch).loss / 4).backward()
    old = max((p.grad - expected[n]).abs().max().item() for n, p in model.named_parameters() if p.requires_grad)
    return expected, old


def deepspeed_update(model_yaml: str, world: int, gas: int, packed: bool) -> dict[str, torch.Tensor]:
    model = build(model_yaml)
    before = trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    size = SAMPLES // (world * gas)
    config = {
        "train_micro_batch_size_per_gpu": size,
        "gradient_accumulation_steps": gas,
        "train_batch_size": SAMPLES,
        "zero_optimization": {"stage": 2},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(params, lr=1.0), config=config)
    batches = micro_batches(model, world, gas, dist.get_rank(), packed)
    items = window_items(batches, torch.device("cpu"), world, gas)
    for batch in batches:
        assert forward_backward(engine, batch, items, CHUNK) is not None
        engine.step()
    after = trainable(engine.module)
    return {n: before[n] - after[n] for n in before}


def main() -> None:
    torch.set_num_threads(1)
    model_yaml, out = sys.argv[1:3]
    expected, old = reference(model_yaml)  # before the process group exists: a plain single process
    init_distributed(torch.device("cpu"))
    world = dist.get_world_size()
    report = {"reference_grad_max": max(g.abs().max().item() for g in expected.values()), "per_micro_mean_diff": old}
    for gas in (1, 4) if world == 1 else (2,):
        for packed in (False, True):
            got = deepspeed_update(model_yaml, world, gas, packed)
            diff = max((got[n] - expected[n]).abs().max().item() for n in expected)
            report[f"{world}x{gas}/{'packed' if packed else 'padded'}"] = diff
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(report))
    close_distributed()


if __name__ == "__main__":
    main()
    leave()
