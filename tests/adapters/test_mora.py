"""MoRA on the tiny composed model's three towers: einsum reference, parameter count, the Gram exchange, exact
merge in memory and by the streamed merge, exact save/load, config errors (training under ZeRO-2/3 through the
training loop: test_train_and_ship.py)."""

from __future__ import annotations

import re

import pytest
import torch
from adapter_helpers import randomize_adapters
from torch import nn

from pipeline.adapters import AdapterConfig, AdapterLinear, adapter_layers, adapter_parameters, attach, merge
from pipeline.adapters.io import export_peft, load_adapter, save_adapter
from pipeline.adapters.mora import MoRALinear
from pipeline.merge import merge_run
from pipeline.model.avllm import AVLLM
from tests.merge.conftest import write_run
from tests.model.conftest import mixed_samples

TOWERS = ["vision", "audio", "llm"]
CFG = AdapterConfig(name="mora", rank=4, alpha=8, scope=TOWERS, targets=["q_proj", "o_proj", "out_proj"])


def build(tiny_model_config, cfg: AdapterConfig = CFG) -> tuple[AVLLM, dict]:
    """A tiny composed model (fixed projectors) with MoRA attached and every adapter parameter non-trivial."""
    torch.manual_seed(0)
    model = AVLLM.from_config(tiny_model_config("llama")).eval()
    attach(model, cfg)
    randomize_adapters(model)
    with torch.no_grad():  # α_shared starts at 0, which would hide the shared path
        for name, p in adapter_parameters(model).items():
            if name.endswith("alpha_shared"):
                p.add_(0.5)
    return model, model.build_processor()(mixed_samples())


def logits(model: AVLLM, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def shared_params(model: nn.Module) -> dict[tuple[str, int], torch.Tensor]:
    """S per (tower, block), found by parameter name, independently of the registry."""
    found = {}
    for name, p in adapter_parameters(model).items():
        if name.endswith(".shared_S"):
            found[(name.split(".")[0], int(re.search(r"\.layers\.(\d+)\.", name).group(1)))] = p
    return found


def reference_weight(layer: MoRALinear, s_by_block: dict[tuple[str, int], torch.Tensor]) -> torch.Tensor:
    """W from explicit tensors with einsum: G_o = mean of the other towers' S Sᵀ at the same block (equal depths)."""
    w0, s = layer.base_layer.weight, layer.scaling
    own = s_by_block[(layer.tower, layer.block)]
    grams = [torch.einsum("rd,qd->rq", S, S) for (t, b), S in s_by_block.items()
             if t != layer.tower and b == layer.block]
    g_other = torch.stack(grams).mean(0)
    v_spec = w0 + s * torch.einsum("or,ri->oi", layer.lora_B, layer.lora_A)
    v_shared = w0 + s * torch.einsum("ri,rq,qj->ij", own, g_other, own)
    return layer.alpha_tower * v_spec / v_spec.norm() + layer.alpha_shared * v_shared / v_shared.norm()


def test_layer_output_and_delta_equal_an_einsum_reference(tiny_model_config):
    model, _ = build(tiny_model_config)
    s_by_block = shared_params(model)
    assert set(s_by_block) == {(t, b) for t in TOWERS for b in (0, 1)}
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2))
    for name, layer in adapter_layers(model).items():
        weight = reference_weight(layer, s_by_block)
        bias = layer.base_layer.bias
        expected = torch.einsum("bti,oi->bto", x, weight) + (0 if bias is None else bias)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0, msg=name)
            torch.testing.assert_close(layer.delta_weight(), weight - layer.base_layer.weight, atol=1e-5, rtol=0)


def test_parameter_count_equals_the_formula(tiny_model_config):
    """Per layer A, B (2·r·d) and the two scalars; per (tower, block) one S (r·d)."""
    torch.manual_seed(0)
    model = AVLLM.from_config(tiny_model_config("llama"))
    report = attach(model, CFG)
    widths = [model.get_submodule(n).in_features for n in report.layers]
    assert len(report.layers) == 12  # 3 towers x 2 blocks x (q_proj, o_proj | out_proj)
    assert report.trainable_params == sum(2 * 4 * d + 2 for d in widths) + 3 * 2 * 4 * 64


def test_attached_model_is_the_base_model(tiny_model_config):
    torch.manual_seed(0)
    model = AVLLM.from_config(tiny_model_config("llama")).eval()
    batch = model.build_processor()(mixed_samples())
    before = logits(model, batch)
    attach(model, CFG)
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


def test_gram_exchange_shapes_symmetry_and_gradient_coupling(tiny_model_config):
    model, _ = build(tiny_model_config)
    layer = model.get_submodule("vision.encoder.encoder.layers.1.self_attn.q_proj")
    registry, s_by_block = layer.shared, shared_params(model)
    for (tower, block), s in s_by_block.items():
        g = registry.gram(tower, block)
        assert g.shape == (4, 4)
        torch.testing.assert_close(g, g.t(), atol=0, rtol=0)
        assert torch.linalg.eigvalsh(g.detach()).min() > -1e-6
    g_other = registry.other_gram("vision", 1)
    torch.testing.assert_close(g_other, (registry.gram("audio", 1) + registry.gram("llm", 1)) / 2)
    delta = s_by_block[("vision", 1)].t() @ g_other @ s_by_block[("vision", 1)]
    assert delta.shape == (64, 64)
    torch.testing.assert_close(delta, delta.t(), atol=1e-6, rtol=0)
    layer(torch.randn(1, 3, 64)).pow(2).sum().backward()
    for (tower, block), s in s_by_block.items():  # the exchange couples exactly block 1 of every tower
        assert (s.grad is not None and s.grad.abs().sum() > 0) == (block == 1), (tower, block)


def test_towers_of_different_depth_pair_by_relative_depth(tiny_model_config):
    model, _ = build(tiny_model_config)
    registry = model.get_submodule("llm.model.layers.0.self_attn.q_proj").shared
    registry.blocks["llm"] = 4  # as if the LLM had twice the encoders' depth
    assert [registry.paired_block("llm", i, "vision") for i in range(4)] == [0, 0, 1, 1]
    assert [registry.paired_block("vision", i, "llm") for i in range(2)] == [0, 2]


def test_merge_is_exact_on_all_three_towers(tiny_model_config):
    model, batch = build(tiny_model_config)
    before = logits(model, batch)
    assert len(merge(model)) == 12
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    assert type(model.get_submodule("vision.encoder.encoder.layers.0.self_attn.q_proj")) is nn.Linear
    torch.testing.assert_close(logits(model, batch), before, atol=1e-5, rtol=0)


def test_save_load_round_trip_is_exact(tiny_model_config, tmp_path):
    model, batch = build(tiny_model_config)
    save_adapter(model, tmp_path, CFG)
    torch.manual_seed(0)
    loaded = AVLLM.from_config(tiny_model_config("llama")).eval()
    cfg, report = load_adapter(loaded, tmp_path)
    assert cfg == CFG and report.layers == list(adapter_layers(model))
    for (k, a), (_, b) in zip(adapter_parameters(model).items(), adapter_parameters(loaded).items()):
        assert torch.equal(a, b), k
    assert torch.equal(logits(loaded, batch), logits(model, batch))


@pytest.mark.parametrize("changes, message", [
    ({"targets": ["q_proj", "k_proj"]},
     r"adapter.targets: mora adapts square layers only .* 'llm\..*k_proj' is 64 -> 32"),
    ({"scope": ["llm"]}, r"adapter.scope: mora needs at least two towers"),
])
def test_config_errors_are_one_line(tiny_model_config, changes, message):
    model = AVLLM.from_config(tiny_model_config("llama"))
    cfg = AdapterConfig(**{**CFG.__dict__, **changes})
    with pytest.raises(ValueError, match=message) as err:
        attach(model, cfg)
    assert "\n" not in str(err.value)


def test_peft_export_refuses_mora(tiny_model_config, tmp_path):
    model, _ = build(tiny_model_config)
    with pytest.raises(ValueError, match="export_peft: adapter 'mora' has no PEFT LoRA equivalent"):
        export_peft(model, tmp_path, CFG)


def test_streamed_merge_of_a_run_equals_the_unmerged_model(tiny_model_config, tmp_path):
    """The LLM's layers are folded one at a time from a meta skeleton, each with every tower's S from the export."""
    model, batch = build(tiny_model_config)
    run = write_run(tmp_path / "run", model, CFG)
    merged = AVLLM.from_pretrained(merge_run(run, tmp_path / "out")).eval()
    assert not any(isinstance(m, AdapterLinear) for m in merged.modules())
    torch.testing.assert_close(logits(merged, batch), logits(model, batch), rtol=1e-5, atol=1e-5)
