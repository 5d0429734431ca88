"""Uni-modal LoRA, MokA, LoRAMoE and HydraLoRA: outputs against explicit einsum references, parameter counts, MokA's
modality locality and KV-cache decoding, LoRAMoE's balance loss, merge refusal and exact save/load (training under
ZeRO-2/3 through the training loop: test_train_and_ship.py)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from adapter_helpers import VOCAB, modality_ids, randomize_adapters, tiny_llama
from torch import nn

from pipeline.adapters.io import load_model
from pipeline.adapters import ADAPTERS, AdapterConfig, adapter_layers, attach, aux_loss, merge
from pipeline.adapters.io import load_adapter, save_adapter
from pipeline.merge import MergeError, merge_run
from pipeline.modality import Modality, ModalityContext
from tests.merge.conftest import make_run
from tests.model.conftest import mixed_samples

ROUTED = ["unimodal_lora", "moka", "loramoe", "hydralora"]
D_IN, D_OUT, RANK, SEQ = 16, 12, 4, 12


def question_flags(ids: torch.Tensor) -> torch.Tensor:
    """The first three text tokens after the media are the question, except in sample 1 (no question at all)."""
    text = ids == int(Modality.TEXT)
    after_media = torch.cumsum((ids == int(Modality.AUDIO)).int(), 1) > 0
    flags = text & after_media & (torch.cumsum((text & after_media).int(), 1) <= 3)
    flags[1] = False
    return flags


def mixed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = modality_ids(4, SEQ, seed=seed)  # visual, audio, text spans, PAD in sample 0, sample 3 text only
    x = torch.randn(4, SEQ, D_IN, generator=torch.Generator().manual_seed(seed))
    return x, ids, question_flags(ids)


def make_layer(name: str, options: dict | None = None, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    cfg = AdapterConfig(name=name, rank=RANK, alpha=8, options=options or {})
    layer = ADAPTERS[name](nn.Linear(D_IN, D_OUT), cfg, ModalityContext(), (0, 1), "layer")
    with torch.no_grad():
        for key, p in layer.named_parameters():
            if not key.startswith("base_layer."):
                p.normal_(0, 0.3)
    return layer


# ---- independent references: explicit weights, einsum, and (MokA) a plain loop over samples and tokens ----------

def onehot(ids: torch.Tensor) -> torch.Tensor:
    return torch.stack([(ids == m).float() for m in range(3)], -1)


def ref_unimodal(layer, x, ids, question):
    u = torch.einsum("mrd,btd->btmr", layer.lora_A, x)
    return torch.einsum("omr,btmr,btm->bto", layer.lora_B, u, onehot(ids))


def ref_moka(layer, x, ids, question):
    a_mats, b, w = layer.lora_A, layer.lora_B[:, 0], layer.cross_weight
    out = torch.zeros(*x.shape[:2], D_OUT)
    for i in range(x.shape[0]):
        keys = [a_mats[0] @ x[i, t] for t in range(SEQ) if question[i, t] and ids[i, t] == 0]
        q = torch.stack(keys) if keys else None
        for t in range(SEQ):
            m = int(ids[i, t])
            if m < 0:
                continue
            a = a_mats[m] @ x[i, t]
            if m > 0 and q is not None:
                a = a + w * torch.softmax(q @ a / math.sqrt(RANK), 0) @ q
            out[i, t] = b @ a
    return out


def ref_loramoe(layer, x, ids, question):
    g = torch.softmax(torch.einsum("ed,btd->bte", layer.router, x), -1)
    return torch.einsum("bte,oer,erd,btd->bto", g, layer.lora_B, layer.lora_A, x)


def ref_hydralora(layer, x, ids, question):
    g = torch.softmax(torch.einsum("hd,btd->bth", layer.router, x), -1)
    return torch.einsum("bth,ohr,rd,btd->bto", g, layer.lora_B, layer.lora_A[0], x)


REFERENCES = {"unimodal_lora": ref_unimodal, "moka": ref_moka, "loramoe": ref_loramoe, "hydralora": ref_hydralora}


@pytest.mark.parametrize("name, options", [
    ("unimodal_lora", {}), ("moka", {}), ("moka", {"cross_weight": 0.5}), ("loramoe", {}),
    ("loramoe", {"experts": 3}), ("hydralora", {}), ("hydralora", {"heads": 2}),
])
def test_output_equals_reference(name, options):
    layer = make_layer(name, options)
    x, ids, question = mixed_batch()
    layer.ctx.set(ids, question)
    with torch.no_grad():
        expected = layer.base_layer(x) + layer.scaling * REFERENCES[name](layer, x, ids, question)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ROUTED)
def test_gradients_are_finite_and_reach_every_parameter(name):
    layer = make_layer(name)
    x, ids, question = mixed_batch()
    layer.ctx.set(ids, question)
    layer(x.requires_grad_()).square().sum().backward()
    for key, p in layer.named_parameters():
        if not key.startswith("base_layer."):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, key
    assert torch.isfinite(x.grad).all()


def _count(name: str, shapes: list[tuple[int, int]], r: int, n: int) -> int:
    return sum({"unimodal_lora": 3 * r * (i + o), "moka": 3 * r * i + r * o,
                "loramoe": n * r * (i + o) + n * i, "hydralora": r * i + n * r * o + n * i}[name] for i, o in shapes)


@pytest.mark.parametrize("name, options, n", [
    ("unimodal_lora", {}, 0), ("moka", {}, 0), ("loramoe", {}, 4), ("loramoe", {"experts": 3}, 3),
    ("hydralora", {}, 4), ("hydralora", {"heads": 6}, 6),
])
def test_trainable_count_matches_formula(name, options, n):
    model = tiny_llama()
    base = {k: (m.in_features, m.out_features) for k, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = attach(model, AdapterConfig(name=name, rank=4, options=options))
    assert report.trainable_params == _count(name, [base[k] for k in report.layers], 4, n)


@pytest.mark.parametrize("name, key, value", [
    ("loramoe", "experts", 0), ("loramoe", "balance_coef", -1), ("hydralora", "heads", 1.5),
    ("loramoe", "cross_weight", 1),  # MokA's option: unknown to LoRAMoE
])
def test_invalid_options_name_the_key(name, key, value):
    with pytest.raises(ValueError, match=f"adapter.options.{key}"):
        AdapterConfig(name=name, options={key: value}).validate()


# ---- MokA: locality and KV-cache decoding --------------------------------------------------------------------------

def _affected(perturbed: int, ids: torch.Tensor, question: torch.Tensor, cross: bool) -> torch.Tensor:
    """Tokens whose output may change when A of modality `perturbed` changes: its own tokens, and for A_text also
    the non-text tokens of samples that have a question (the cross-attention's keys and values)."""
    own = ids == perturbed
    if perturbed != int(Modality.TEXT) or not cross:
        return own
    has_question = (question & (ids == 0)).any(1, keepdim=True)
    return own | ((ids > 0) & has_question)


@pytest.mark.parametrize("perturbed", [0, 1, 2])
@pytest.mark.parametrize("cross_weight", [1.0, 0.0])
def test_moka_token_depends_only_on_its_modality_a_and_the_question(perturbed, cross_weight):
    layer = make_layer("moka", {"cross_weight": cross_weight})
    x, ids, question = mixed_batch()
    layer.ctx.set(ids, question)
    with torch.no_grad():
        before = layer(x)
        layer.lora_A[perturbed].add_(torch.randn(RANK, D_IN))
        after = layer(x)
    changed = (after - before).abs().amax(-1) > 1e-6
    affected = _affected(perturbed, ids, question, cross_weight != 0)
    assert torch.equal(changed, affected)
    assert (ids[changed] >= 0).all()


def test_moka_kv_cache_decoding_equals_full_recomputation():
    model = tiny_llama()
    ctx = ModalityContext()
    attach(model, AdapterConfig(name="moka", rank=4), ctx)
    randomize_adapters(model)
    model.eval()
    prompt = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(4))
    ids = modality_ids(3, 16, seed=2, pad=False)
    question = (ids == 0) & (torch.arange(16) >= 12)
    steps = 4
    # the KV-cache keyword (and output field) of the installed transformers: `cache` in 5.x, where `past_key_values`
    # is deprecated (removed in 5.40); `past_key_values` before
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        ctx.set(ids, question)
        out = model(input_ids=prompt, use_cache=True)
        tokens, cached = prompt, [out.logits[:, -1]]
        for _ in range(steps):
            tokens = torch.cat([tokens, cached[-1].argmax(-1, keepdim=True)], 1)
            ctx.set_text(3, 1, "cpu")
            out = model(input_ids=tokens[:, -1:], **{cache: getattr(out, cache)}, use_cache=True)
            cached.append(out.logits[:, -1])
        pad_text = torch.zeros(3, steps, dtype=torch.long)
        ctx.set(torch.cat([ids, pad_text], 1), torch.cat([question, pad_text.bool()], 1))
        full = model(input_ids=tokens).logits[:, 15:]
    torch.testing.assert_close(torch.stack(cached, 1), full, atol=1e-5, rtol=1e-5)
    ctx.set(ids, question & False)  # the question really enters the prompt's outputs
    with torch.no_grad():
        assert (model(input_ids=prompt).logits[:, -1] - cached[0]).abs().max() > 1e-4


# ---- LoRAMoE's balance loss ------------------------------------------------------------------------------------------

def test_loramoe_balance_loss_is_cv_squared_of_the_non_pad_load():
    layer = make_layer("loramoe", {"balance_coef": 0.1})
    x, ids, question = mixed_batch()
    layer.ctx.set(ids, question)
    layer(x)
    g = torch.softmax(torch.einsum("ed,btd->bte", layer.router, x), -1)
    load = g[ids >= 0].sum(0)
    expected = 0.1 * ((load - load.mean()) ** 2).mean() / load.mean() ** 2
    torch.testing.assert_close(layer.last_aux_loss, expected)


def test_aux_loss_sums_the_layers_and_trains_the_router():
    model = tiny_llama()
    attach(model, AdapterConfig(name="loramoe", rank=4, options={"balance_coef": 1.0}))
    assert aux_loss(model) == 0.0  # nothing recorded before a forward
    model(input_ids=torch.randint(0, VOCAB, (2, 8)))
    layers = adapter_layers(model).values()
    total = aux_loss(model)
    torch.testing.assert_close(total, sum(m.last_aux_loss for m in layers))
    total.backward()
    assert all(m.router.grad.abs().sum() > 0 for m in layers)


# ---- merge and files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ROUTED)
def test_merge_refuses(name):
    model = tiny_llama()
    attach(model, AdapterConfig(name=name, rank=4))
    cls = ADAPTERS[name].__name__
    with pytest.raises(ValueError, match=rf"merge: adapters of type {cls} are not mergeable"):
        merge(model)


@pytest.mark.parametrize("name, options", [
    ("unimodal_lora", {}), ("moka", {"cross_weight": 0.7}), ("loramoe", {"experts": 3, "balance_coef": 0.01}),
    ("hydralora", {"heads": 3}),
])
def test_save_load_round_trip_is_exact_on_a_mixed_map(name, options, tmp_path):
    tokens = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(2))
    ids = modality_ids(4, SEQ)
    outputs = []
    for load in (False, True):
        model, ctx = tiny_llama(), ModalityContext()
        cfg = AdapterConfig(name=name, rank=4, options=options)
        if load:
            assert load_adapter(model, tmp_path, ctx)[0] == cfg
        else:
            attach(model, cfg, ctx)
            randomize_adapters(model)
            save_adapter(model, tmp_path, cfg)
        ctx.set(ids, question_flags(ids))
        with torch.no_grad():
            outputs.append(model(input_ids=tokens).logits)
    assert torch.equal(*outputs)


@pytest.mark.parametrize("name", ROUTED)
def test_launch_merge_refuses_and_keep_adapters_ships_the_unmerged_model(name, tmp_path, tiny_model_config):
    """The composed model on mixed samples (its processor's modality map and question span): the checkpoint written
    with --keep-adapters reproduces the trained model's logits."""
    run, trained = make_run(tmp_path / "run", tiny_model_config("llama"), AdapterConfig(name=name, rank=4,
                                                                                         scope=["llm"]))
    with pytest.raises(MergeError, match="cannot be merged.*--keep-adapters"):
        merge_run(run, tmp_path / "out")
    loaded = load_model(merge_run(run, tmp_path / "out", keep_adapters=True)).eval()
    batch = trained.build_processor()(mixed_samples())
    assert batch["question_mask"].any()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, trained(**batch).logits, rtol=0, atol=1e-5)

