"""Config validation, target selection, modality contexts, trainable flags and parameter-count formulas."""

from __future__ import annotations

import pytest
from adapter_helpers import tiny_llama
from torch import nn

from pipeline.adapters import ADAPTERS, AdapterConfig, adapter_layers, attach, mark_trainable
from pipeline.config import ConfigError, from_dict
from pipeline.modality import Modality, ModalityContext


def test_unknown_name_names_the_key_and_the_registry():
    with pytest.raises(ConfigError, match=r"adapter.name: unknown adapter 'lorra' \(registered: lora, dora, bitfit, imod[,)]"):
        from_dict(AdapterConfig, {"name": "lorra"}, where="run.yaml")


@pytest.mark.parametrize("data, key", [
    ({"rank": 0}, "adapter.rank"),
    ({"dropout": 1.5}, "adapter.dropout"),
    ({"name": "imod", "options": {"lambda3": 1}}, "adapter.options.lambda3"),
    ({"name": "lora", "options": {"lambda1": 1}}, "adapter.options.lambda1"),
    ({"name": "imod", "options": {"text_share": 2}}, "adapter.options.text_share"),
])
def test_invalid_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(AdapterConfig, data)


def test_registry_names():
    assert list(ADAPTERS)[:4] == ["lora", "dora", "bitfit", "imod"]
    assert {"unimodal_lora", "moka", "loramoe", "hydralora", "mora", "delo"} <= set(ADAPTERS)


class Composed(nn.Module):
    """An LLM and an encoder tower that both have q_proj layers, like the composed model."""

    def __init__(self):
        super().__init__()
        self.llm = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "o_proj": nn.Linear(8, 8)})
        self.vision = nn.ModuleDict({"q_proj": nn.Linear(8, 8)})
        self.projector = nn.Linear(8, 8)
        self.modality_contexts = {"llm": ModalityContext(), "vision": ModalityContext(Modality.VISUAL)}


@pytest.mark.parametrize("targets, scope, expected", [
    (["q_proj"], [], ["llm.q_proj", "vision.q_proj"]),
    (["q_proj", "o_proj"], ["llm"], ["llm.q_proj", "llm.o_proj"]),
    (["vision.*"], [], ["vision.q_proj"]),
])
def test_targets_and_scope(targets, scope, expected):
    model = Composed()
    report = attach(model, AdapterConfig(targets=targets, scope=scope))
    assert report.layers == expected


def test_contexts_by_prefix_from_the_model():
    model = Composed()
    attach(model, AdapterConfig(targets=["q_proj"]))
    assert model.llm.q_proj.ctx is model.modality_contexts["llm"]
    assert model.vision.q_proj.ctx is model.modality_contexts["vision"]


def test_no_match_is_an_error():
    with pytest.raises(ValueError, match="adapter.targets"):
        attach(Composed(), AdapterConfig(targets=["nope"]))


def _formula(name: str, shapes: list[tuple[int, int]], r: int) -> int:
    lora = sum(r * (i + o) for i, o in shapes)
    delo = sum(3 * 8 * (2 * i + o) for i, o in shapes)  # one task, 3 modalities x pool_size 8 x (a, router, b)
    return {"lora": lora, "imod": lora, "dora": lora + sum(o for _, o in shapes), "bitfit": sum(o for _, o in shapes),
            "delo": delo}[name]


@pytest.mark.parametrize("name", ["lora", "dora", "bitfit", "imod"])  # the routed methods: test_routed.py
def test_trainable_count_matches_formula_and_flags(name):
    model = tiny_llama()
    base = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = attach(model, AdapterConfig(name=name, rank=4))
    assert len(report.layers) == 14
    assert report.trainable_params == _formula(name, [base[n] for n in report.layers], 4)
    for layer in adapter_layers(model).values():
        assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert mark_trainable(model) == report.trainable_params
    assert mark_trainable(model, ["lm_head.*"]) == report.trainable_params + model.lm_head.weight.numel()
    assert not model.model.embed_tokens.weight.requires_grad


def test_rslora_scaling():
    model = tiny_llama()
    attach(model, AdapterConfig(rank=4, alpha=8, rslora=True))
    assert model.model.layers[0].self_attn.q_proj.scaling == pytest.approx(8 / 2)


def test_attach_twice_is_an_error():
    model = tiny_llama()
    attach(model, AdapterConfig())
    with pytest.raises(ValueError, match="already has adapters"):
        attach(model, AdapterConfig())
