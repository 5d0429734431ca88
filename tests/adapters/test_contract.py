"""The adapter contract, table-driven over the registry: every registered method (and any method added later) must
keep what generic code relies on. A method only needs an entry in CONFIGS when its defaults do not fit the tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.adapters import (ADAPTERS, AdapterConfig, adapter_layers, adapter_parameters, attach, mark_trainable,
                               merge, start_task)
from pipeline.adapters.dominance import DominanceProbe
from pipeline.adapters.io import export_peft, load_adapter, save_adapter
from pipeline.config import ConfigError, from_dict
from pipeline.model.avllm import AVLLM
from tests.adapters.adapter_helpers import randomize_adapters
from tests.model.conftest import mixed_samples

# what a user would write for the tiny composed model, beyond `name`
CONFIGS = {"mora": {"targets": ["q_proj", "o_proj", "out_proj"], "scope": ["vision", "audio", "llm"]}}
NAMES = list(ADAPTERS)


def adapter_cfg(name: str) -> AdapterConfig:
    return from_dict(AdapterConfig, {"name": name, "rank": 4, **CONFIGS.get(name, {"scope": ["llm"]})})


@pytest.fixture(scope="module")
def base(tiny_model_config):
    torch.manual_seed(0)
    return AVLLM.from_config(tiny_model_config("llama")).eval()


@pytest.fixture(scope="module")
def batch(base):
    return base.build_processor()(mixed_samples())


def logits(model: AVLLM, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def attached(base: AVLLM, name: str, randomize: bool = True) -> AVLLM:
    model = AVLLM.from_config(base.config).eval()
    model.load_state_dict(base.state_dict())
    attach(model, adapter_cfg(name))
    if randomize:
        randomize_adapters(model)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_registration_and_options(name):
    cls = ADAPTERS[name]
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.Options)
    cls.Options()  # every option has a default
    cfg = adapter_cfg(name)
    assert isinstance(cfg.method_options(), cls.Options)
    with pytest.raises(ConfigError, match="adapter.options.not_an_option"):
        from_dict(AdapterConfig, {**dataclasses.asdict(cfg), "options": {"not_an_option": 1}})


@pytest.mark.parametrize("name", NAMES)
def test_attached_model_starts_as_the_base_model(base, batch, name):
    """At init an adapter changes nothing (B = 0, magnitudes at the base norms, copied biases, ...)."""
    model = attached(base, name, randomize=False)
    torch.testing.assert_close(logits(model, batch), logits(base, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_trainable_set_is_the_adapter_and_it_gets_gradients(base, batch, name):
    model = attached(base, name).train()
    count = mark_trainable(model)
    params = adapter_parameters(model)
    assert count == sum(p.numel() for p in params.values() if p.requires_grad) > 0
    start_task(model, 0)  # every method accepts the first task
    model(**batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


@pytest.mark.parametrize("name", NAMES)
def test_merge_is_exact_or_refused(base, batch, name):
    model = attached(base, name)
    expected = logits(model, batch)
    if not ADAPTERS[name].mergeable:
        with pytest.raises(ValueError, match="not mergeable"):
            merge(model)
        return
    merge(model)
    assert not adapter_layers(model)
    torch.testing.assert_close(logits(model, batch), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_saved_adapter_loads_to_the_same_model(base, batch, name, tmp_path):
    model = attached(base, name)
    save_adapter(model, tmp_path / "adapter", adapter_cfg(name))
    fresh = AVLLM.from_config(base.config).eval()
    fresh.load_state_dict(base.state_dict())
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(logits(fresh, batch), logits(model, batch), atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_hold(base, batch, name, tmp_path):
    """lora_family: the dominance probe records it; peft_options: PEFT export writes A and B for every layer;
    for_tasks: the config for a two-task sequence validates."""
    cls = ADAPTERS[name]
    model = attached(base, name).train()
    mark_trainable(model)
    if cls.lora_family:
        with DominanceProbe(model) as probe:
            model(**batch).loss.backward()
        assert 0.0 <= probe.result().rate <= 1.0
    else:
        with pytest.raises(ValueError, match="no LoRA-family"):
            DominanceProbe(model)
    if cls.peft_options is not None:
        export_peft(model, tmp_path / "peft", adapter_cfg(name))
        assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    else:
        with pytest.raises(ValueError, match="no PEFT LoRA equivalent"):
            export_peft(model, tmp_path / "peft", adapter_cfg(name))
    adapter_cfg(name).for_tasks(2).validate()
