"""Every Adapters II method through the real training loop and out through the merge.

Each method is trained by `pipeline.train.loop.train` (what launch/train.py calls) as stage 2 of the tiny model under
ZeRO-2 and ZeRO-3 (2 CPU ranks), with the projectors frozen so that what changes is the adapter's doing. All runs share
one 2-rank launch (ds_train_loop.py): a launch costs more than a run. Each run is then shipped by `merge_run` (a real
merge for MoRA, `keep_adapters` for the token-dependent methods) and the shipped checkpoint must give the logits of the
model DeepSpeed's own checkpoint holds (consolidated by DeepSpeed's zero_to_fp32, not by our export).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from adapter_helpers import run_two_ranks
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from pipeline.adapters.io import load_model
from pipeline.adapters import AdapterLinear, adapter_parameters
from pipeline.config import load_config
from pipeline.merge import merge_run
from pipeline.model.avllm import AVLLM
from pipeline.rundir import RunDir
from pipeline.train.config import RunConfig
from pipeline.train.stages import build_model
from tests.model.conftest import mixed_samples
from tests.train.conftest import REPO, common_overrides, metrics

STAGE2 = REPO / "configs/demo/stage2.yaml"
MORA_TOWERS = {"adapter.scope": "[vision,audio,llm]", "adapter.targets": "[q_proj,o_proj,out_proj]"}
METHODS = {"unimodal_lora": {}, "moka": {}, "loramoe": {"adapter.options.balance_coef": 0.01}, "hydralora": {},
           "mora": MORA_TOWERS, "delo": {}}
MERGED = {"mora"}  # shipped merged; the others carry their modules (--keep-adapters)
ZERO = ("zero2", "zero3")
STEPS = 6
CASES = [(name, zero) for name in METHODS for zero in ZERO]


def ds_config(zero: str, root: Path) -> Path:
    """configs/ds/<zero>.json; for ZeRO-3 with the persistence threshold at 0, since every tensor of the tiny model is
    below the file's 100k and would otherwise stay unpartitioned."""
    path = REPO / f"configs/ds/{zero}.json"
    if zero != "zero3":
        return path
    config = json.loads(path.read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (root / "zero3.json").write_text(json.dumps(config))
    return root / "zero3.json"


@pytest.fixture(scope="module")
def plan(stage1_run, train_data, tmp_path_factory) -> dict[tuple[str, str], list[str]]:
    """The overrides of every (method, ZeRO stage) run, all trained by one 2-rank launch."""
    root = tmp_path_factory.mktemp("loop-runs")
    configs = {zero: ds_config(zero, root) for zero in ZERO}
    overrides = {
        (name, zero): common_overrides(train_data, root / f"{name}-{zero}", stage1_run=stage1_run, max_steps=STEPS,
                                       deepspeed=configs[zero], **{
                                           "adapter.name": name, "adapter.rank": 4, "optim.lr": 3e-3,
                                           "data.num_workers": 0, "train.train_projectors": False, **extra})
        for name, extra in METHODS.items() for zero in ZERO}
    (root / "plan.json").write_text(json.dumps([{"config": str(STAGE2), "overrides": o} for o in overrides.values()]))
    seconds = run_two_ranks("ds_train_loop.py", root / "seconds.json", str(root / "plan.json"))
    assert len(seconds) == len(CASES)
    return overrides


def trained_model(cfg: RunConfig, run: Path) -> tuple[AVLLM, AVLLM]:
    """(the model the run started from, the model in its last DeepSpeed checkpoint), in eval mode."""
    torch.manual_seed(cfg.seed)  # as train() seeds before build_model: the same adapter init
    start, _ = build_model(cfg)
    last = RunDir(run).complete_checkpoints()[-1]
    state = get_fp32_state_dict_from_zero_checkpoint(str(last.parent), tag=last.name, exclude_frozen_parameters=True)
    assert adapter_parameters(start).keys() <= state.keys()
    trained = copy.deepcopy(start)
    assert not trained.load_state_dict(state, strict=False).unexpected_keys
    return start.eval(), trained.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name, zero", CASES, ids=[f"{n}-{z}" for n, z in CASES])
def test_trained_by_the_loop_and_shipped_checkpoint_reproduces_it(plan, name, zero, tmp_path):
    cfg = load_config(RunConfig, STAGE2, plan[name, zero])
    run = Path(cfg.output_dir)
    start, trained = trained_model(cfg, run)
    # every kind of adapter tensor (lora_A, router, shared_S, ...) changed in some layer; not in every layer: the
    # vision tower's last block does not reach the loss (its features come from layer -2), apart from MoRA's S
    moved: dict[str, bool] = {}
    for key, before in adapter_parameters(start).items():
        kind = key.rsplit(".", 1)[1]
        moved[kind] = moved.get(kind, False) or not torch.equal(before, trained.get_parameter(key))
    assert all(moved.values()), moved
    losses = [row["loss"] for row in metrics(run)]
    assert len(losses) == STEPS
    if zero == "zero3":
        assert losses[-1] < losses[0], losses
        twin = [row["loss"] for row in metrics(run.with_name(f"{name}-zero2"))]
        assert losses == pytest.approx(twin, rel=1e-4)  # partitioning every tensor changes nothing

    shipped = load_model(merge_run(run, tmp_path / "out", keep_adapters=name not in MERGED)).eval()
    assert any(isinstance(m, AdapterLinear) for m in shipped.modules()) == (name not in MERGED)
    batch = trained.build_processor()(mixed_samples())
    with torch.no_grad():
        expected = trained(**batch).logits
        assert not torch.allclose(expected, start(**batch).logits, atol=1e-4)
        torch.testing.assert_close(shipped(**batch).logits, expected, rtol=1e-5, atol=1e-5)
