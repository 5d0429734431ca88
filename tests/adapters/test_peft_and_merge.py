"""Equality with HF PEFT (LoRA, DoRA), merging, and the two file formats."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_helpers import VOCAB, modality_ids, randomize_adapters, tiny_llama
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from pipeline.adapters import ADAPTERS, AdapterConfig, AdapterLinear, adapter_layers, attach, merge
from pipeline.adapters.config import DEFAULT_TARGETS
from pipeline.adapters.io import export_peft, load_adapter, save_adapter
from pipeline.modality import ModalityContext

TOKENS = torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(0))


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def ours_and_peft(name: str, rslora: bool = False, dropout: float = 0.0):
    base = tiny_llama()
    ref = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=DEFAULT_TARGETS,
                                                         use_dora=name == "dora", use_rslora=rslora,
                                                         lora_dropout=dropout))
    cfg = AdapterConfig(name=name, rank=4, alpha=8, rslora=rslora, dropout=dropout)
    attach(base, cfg)
    randomize_adapters(base)
    with torch.no_grad():
        for layer_name, layer in adapter_layers(base).items():
            peft_layer = ref.base_model.model.get_submodule(layer_name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            if name == "dora":
                peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    return base, ref, cfg


@pytest.mark.parametrize("name, rslora", [("lora", False), ("lora", True), ("dora", False)])
def test_forward_and_merged_weights_equal_peft(name, rslora):
    ours, ref, _ = ours_and_peft(name, rslora)
    torch.testing.assert_close(logits(ours), logits(ref), atol=1e-5, rtol=0)
    merged_ref = ref.merge_and_unload()
    for layer_name, layer in adapter_layers(ours).items():
        expected = merged_ref.get_submodule(layer_name).weight
        torch.testing.assert_close(layer.merged_weight(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_training_forward_with_dropout_equals_peft(name):
    """Same seed, same order of dropout draws (one per layer): the same masks, so the same outputs."""
    ours, ref, _ = ours_and_peft(name, dropout=0.3)
    outputs = []
    for model in (ours, ref):
        model.train()
        torch.manual_seed(5)
        outputs.append(model(input_ids=TOKENS).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n, cls in ADAPTERS.items() if cls.mergeable and n != "mora"])  # test_mora.py
def test_merged_logits_equal_unmerged(name):
    model = tiny_llama()
    ctx = ModalityContext()
    attach(model, AdapterConfig(name=name, rank=4), ctx)
    randomize_adapters(model)
    ctx.set(modality_ids(*TOKENS.shape))
    before = logits(model)
    assert merge(model)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n in ADAPTERS if n != "mora"])  # mora needs towers: test_mora.py
def test_save_load_round_trip_is_exact(name, tmp_path):
    model = tiny_llama()
    cfg = AdapterConfig(name=name, rank=4, options={"mask_seed": 7} if name == "imod" else {})
    attach(model, cfg)
    randomize_adapters(model)
    if name == "imod":  # a saved partition that no seed would regenerate must still load exactly
        model.model.layers[1].mlp.up_proj.mask_ids.zero_()
    save_adapter(model, tmp_path, cfg)
    loaded = tiny_llama()
    loaded_cfg, report = load_adapter(loaded, tmp_path)
    assert loaded_cfg == cfg and report.layers == list(adapter_layers(model))
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(logits(model), logits(loaded))


@pytest.mark.parametrize("name", ["lora", "dora", "imod"])
def test_peft_export_loads_in_peft(name, tmp_path):
    model = tiny_llama()
    cfg = AdapterConfig(name=name, rank=4, alpha=8)
    attach(model, cfg)
    randomize_adapters(model)
    export_peft(model, tmp_path, cfg)
    ref = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(logits(ref), logits(model), atol=1e-5, rtol=0)


def test_bitfit_has_no_peft_export(tmp_path):
    model = tiny_llama()
    cfg = AdapterConfig(name="bitfit")
    attach(model, cfg)
    with pytest.raises(ValueError, match="no PEFT LoRA equivalent"):
        export_peft(model, tmp_path, cfg)
