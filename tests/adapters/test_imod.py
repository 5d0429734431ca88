"""IMoD: partition masks, the injected gradient against plain autograd, and where it must (not) show up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from adapter_helpers import VOCAB, modality_ids, randomize_adapters, tiny_llama
from torch import nn

from pipeline.adapters import AdapterConfig, adapter_layers, attach
from pipeline.adapters.imod import IMoDOptions, maac_grad, partition_counts, row_weights
from pipeline.modality import Modality, ModalityContext

OPTS = {"shared_ratio0": 0.1, "depth_alpha": 0.4, "text_share": 0.3}


def test_masks_partition_a_and_follow_the_depth_formula():
    model = tiny_llama()
    attach(model, AdapterConfig(name="imod", rank=4, options=OPTS))
    for name, layer in adapter_layers(model).items():
        ids = layer.mask_ids
        assert ids.shape == layer.lora_A.shape
        masks = [(ids == k) for k in (0, 1, 2)]
        assert torch.equal(sum(m.int() for m in masks), torch.ones_like(ids, dtype=torch.int))  # exactly one each
        l, num = layer.depth
        assert num == 2 and l == int(name.split(".")[2])
        n = ids.numel()
        r_s = 0.1 + 0.4 * l / 2
        counts = [int(m.sum()) for m in masks]
        assert counts[2] == round(n * r_s)
        assert counts[0] == round((n - counts[2]) * 0.3)
        assert counts == list(partition_counts(n, l, num, IMoDOptions(**OPTS)))
        rows_with_all = sum(all(bool(m[i].any()) for m in masks) for i in range(ids.shape[0]))
        assert rows_with_all == ids.shape[0]  # interleaved, not blocks of rows


def test_masks_are_reproducible_from_the_seed():
    a, b, c = tiny_llama(), tiny_llama(), tiny_llama()
    for model, seed in ((a, 3), (b, 3), (c, 4)):
        attach(model, AdapterConfig(name="imod", options={"mask_seed": seed}))
    la, lb, lc = (adapter_layers(m)["model.layers.0.self_attn.q_proj"].mask_ids for m in (a, b, c))
    assert torch.equal(la, lb) and not torch.equal(la, lc)


# --- the injected gradient on one layer, against plain autograd on task loss + constraints -----------------

class OneLayer(nn.Module):
    def __init__(self, d: int = 16, out: int = 12):
        super().__init__()
        self.q_proj = nn.Linear(d, out)
        self.head = nn.Linear(out, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.q_proj(x)))


def literal_maac(s, ids):
    """L_MA on shared activations s [B, T, r], per sample with explicit index selection."""
    loss = s.new_zeros(())
    for b in range(s.shape[0]):
        s_t = s[b][ids[b] == Modality.TEXT]
        s_o = s[b][(ids[b] == Modality.VISUAL) | (ids[b] == Modality.AUDIO)]
        if len(s_t) == 0 or len(s_o) == 0:
            continue
        mean_t, mean_o = s_t.mean(0), s_o.mean(0)
        c_t = F.cosine_similarity(s_t, mean_t[None], dim=-1).mean()
        c_o = F.cosine_similarity(s_o, mean_o[None], dim=-1).mean()
        loss = loss + 1 - (c_t + c_o) * F.cosine_similarity(mean_t, mean_o, dim=0)
    return loss


def reference_constraints(a, x, ids, mask_ids):
    """L_TS + L_OS and L_MA written out literally from the issue."""
    m_t, m_o, m_s = [(mask_ids == k).to(a.dtype) for k in (0, 1, 2)]
    text = (ids == Modality.TEXT).unsqueeze(-1).to(x.dtype)
    other = ((ids == Modality.VISUAL) | (ids == Modality.AUDIO)).unsqueeze(-1).to(x.dtype)
    x_t, x_o = x * text, x * other
    a_t, a_o = a * (m_t + m_s), a * (m_o + m_s)
    l_ts = ((x_t @ a_t.T) - (x_t @ a.T)).pow(2).sum()
    l_os = ((x_o @ a_o.T) - (x_o @ a.T)).pow(2).sum()
    return l_ts + l_os, literal_maac(x @ (a * m_s).T, ids)


def one_layer_pair(lambda1, lambda2, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    ctx = ModalityContext()
    ours, ref = OneLayer(), OneLayer()
    ref.load_state_dict(ours.state_dict())
    attach(ours, AdapterConfig(name="imod", rank=4, targets=["q_proj"], dropout=dropout,
                               options={"lambda1": lambda1, "lambda2": lambda2}), ctx)
    attach(ref, AdapterConfig(name="lora", rank=4, targets=["q_proj"], dropout=dropout), ctx)
    randomize_adapters(ours, seed)
    with torch.no_grad():
        ref.q_proj.lora_A.copy_(ours.q_proj.lora_A)
        ref.q_proj.lora_B.copy_(ours.q_proj.lora_B)
    return ctx, ours, ref


@pytest.mark.parametrize("lambda1, lambda2", [(1.0, 0.0), (0.0, 1.0), (0.7, 2.5), (1.0, 1e-4)])
def test_injected_gradient_equals_autograd_on_the_constraints(lambda1, lambda2):
    ctx, ours, ref = one_layer_pair(lambda1, lambda2)
    x = torch.randn(4, 10, 16)
    ids = modality_ids(4, 10)
    ctx.set(ids)
    target = torch.randn(4, 10, 5)

    loss = F.mse_loss(ours(x), target)
    loss.backward()

    ref_loss = F.mse_loss(ref(x), target)
    layer = ref.q_proj
    msd, ma = reference_constraints(layer.lora_A, x, ids, ours.q_proj.mask_ids)
    (ref_loss + lambda1 * msd + lambda2 * ma).backward()

    assert torch.equal(loss, ref_loss)  # the reported loss is the task loss
    torch.testing.assert_close(ours.q_proj.lora_A.grad, layer.lora_A.grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.q_proj.lora_B.grad, layer.lora_B.grad)  # only A receives the constraints
    assert torch.equal(ours.head.weight.grad, ref.head.weight.grad)


def test_with_dropout_the_task_gradient_sees_dropout_x_and_the_constraints_x():
    ctx, ours, ref = one_layer_pair(1.0, 1.0, dropout=0.3)
    x = torch.randn(4, 10, 16)
    ids = modality_ids(4, 10)
    ctx.set(ids)
    target = torch.randn(4, 10, 5)
    torch.manual_seed(5)  # the same dropout masks in both
    F.mse_loss(ours(x), target).backward()
    torch.manual_seed(5)
    msd, ma = reference_constraints(ref.q_proj.lora_A, x, ids, ours.q_proj.mask_ids)
    (F.mse_loss(ref(x), target) + msd + ma).backward()
    torch.testing.assert_close(ours.q_proj.lora_A.grad, ref.q_proj.lora_A.grad, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.q_proj.lora_B.grad, ref.q_proj.lora_B.grad)


def test_closed_form_maac_gradient_on_edge_cases():
    """Against autograd through F.cosine_similarity: PAD rows, text-only, non-text-only and all-PAD samples, rows
    with zero shared activation, and a non-text mean that is exactly zero."""
    T, V, A, P = (int(m) for m in (Modality.TEXT, Modality.VISUAL, Modality.AUDIO, Modality.PAD))
    ids = torch.tensor([
        [V, V, A, T, T, T, P, P],  # mixed, padded
        [T, T, T, T, T, T, T, T],  # text only: no MAAC term
        [V, V, V, A, A, A, A, P],  # non-text only: no MAAC term
        [P, P, P, P, P, P, P, P],
        [T, V, V, T, T, A, T, T],  # rows 0 and 5 get s = 0
        [T, T, T, T, V, A, T, P],  # non-text rows v and -v: zero mean
    ])
    s = torch.randn(6, 8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    s[4, 0] = 0
    s[4, 5] = 0
    s[5, 5] = -s[5, 4]
    s.requires_grad_(True)
    (expected,) = torch.autograd.grad(literal_maac(s, ids), s)
    weights = row_weights(ids, s.dtype)
    got = maac_grad(s.detach(), weights.mean, weights.rows)
    assert torch.isfinite(got).all() and got[1:4].abs().max() == 0
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-7)


def _llm_step(name: str, options: dict, micro_batches: int = 1, checkpointing: str | None = None):
    """A-gradients of a tiny Llama after one (possibly accumulated) step on the same 4-sample batch."""
    model = tiny_llama()
    ctx = ModalityContext()
    attach(model, AdapterConfig(name=name, rank=4, options=options), ctx)
    randomize_adapters(model)
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": checkpointing == "reentrant"})
        if checkpointing == "reentrant":  # reentrant checkpoints only backpropagate into inputs requiring grad
            model.enable_input_require_grads()
    model.train()
    forwards = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: forwards.append(1))
    tokens = torch.randint(0, VOCAB, (4, 20), generator=torch.Generator().manual_seed(2))
    ids = modality_ids(4, 20)
    losses = []
    for chunk_tokens, chunk_ids in zip(tokens.chunk(micro_batches), ids.chunk(micro_batches)):
        ctx.set(chunk_ids)
        loss = model(input_ids=chunk_tokens, labels=chunk_tokens).loss
        (loss / micro_batches).backward()  # what DeepSpeed does with gradient_accumulation_steps
        losses.append(loss.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(forwards) == micro_batches * (2 if checkpointing else 1)  # recomputation did run
    return torch.stack(losses), grads


IMOD = {"lambda1": 1.0, "lambda2": 0.5}


def test_zero_lambdas_are_lora_bit_for_bit():
    loss_lora, lora = _llm_step("lora", {})
    loss_imod, imod = _llm_step("imod", {"lambda1": 0.0, "lambda2": 0.0})
    assert torch.equal(loss_lora, loss_imod)
    assert lora.keys() == imod.keys() and all(torch.equal(lora[k], imod[k]) for k in lora)


def test_constraints_reach_a_only_and_never_the_loss():
    loss_lora, lora = _llm_step("lora", {})
    loss_imod, imod = _llm_step("imod", IMOD)
    assert torch.equal(loss_lora, loss_imod)
    for k in lora:
        same = torch.equal(lora[k], imod[k])
        assert same != k.endswith("lora_A"), k


def test_gradient_accumulation_matches_the_one_batch():
    """Convention (pipeline/adapters/imod.py): micro-batch task losses divided by the accumulation steps, the
    injected sums added once per micro-batch -> the same A-gradient as the one batch of all micro-batches."""
    _, whole = _llm_step("imod", IMOD, micro_batches=1)
    _, accumulated = _llm_step("imod", IMOD, micro_batches=2)
    for k in whole:
        torch.testing.assert_close(accumulated[k], whole[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
def test_activation_checkpointing_injects_exactly_once(mode):
    _, plain = _llm_step("imod", IMOD)
    _, ckpt = _llm_step("imod", IMOD, checkpointing=mode)
    a_grads = [k for k in plain if k.endswith("lora_A")]
    assert len(a_grads) == 14
    for k in a_grads:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5)
