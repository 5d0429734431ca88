"""DeLo: the layer against an explicit per-sample computation, parameter counts, task keys, task freezing, the
router's gradient, save/load, and a 2-rank ZeRO-3 run of a second task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from adapter_helpers import VOCAB, modality_ids, randomize_adapters, run_two_ranks, tiny_llama
from torch import nn

from pipeline.adapters.io import load_model
from pipeline.adapters import (
    AdapterConfig,
    adapter_layers,
    adapter_parameters,
    adapter_state,
    attach,
    aux_loss,
    mark_trainable,
)
from pipeline.adapters import start_task
from pipeline.adapters.delo import DeLoLinear, proxy_queries
from pipeline.adapters.io import load_adapter, save_adapter
from pipeline.config import save_config
from pipeline.merge import MergeError, merge_run
from pipeline.model.avllm import AVLLM
from pipeline.modality import Modality, ModalityContext
from pipeline.rundir import gather_trainables, write_trainables
from pipeline.train.config import RunConfig
from tests.model.conftest import mixed_samples

D_IN, D_OUT = 16, 12


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q_proj = nn.Linear(D_IN, D_OUT)


def one_layer(tasks: int = 2, pool_size: int = 5, rank: int = 2) -> tuple[OneLayer, DeLoLinear, ModalityContext]:
    model, ctx = OneLayer(), ModalityContext()
    cfg = AdapterConfig(name="delo", rank=rank, alpha=3.0, targets=["q_proj"],
                        options={"tasks": tasks, "pool_size": pool_size, "align_weight": 0.5})
    attach(model, cfg, ctx)
    randomize_adapters(model)
    return model, model.q_proj, ctx


def mixed_ids() -> torch.Tensor:
    """Complete samples with padding, a text-only sample, a sample without text and a sample without visual."""
    ids = modality_ids(5, 14, seed=2)
    ids[3] = int(Modality.VISUAL)
    ids[3, -2:] = int(Modality.AUDIO)
    ids[4, :5] = int(Modality.AUDIO)
    return ids


def reference(layer: DeLoLinear, x: torch.Tensor, ids: torch.Tensor,
              tasks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and L_align written out per sample, per modality: explicit queries, proxy, top-k and Σ b_i ⊗ a_i."""
    out = layer.base_layer(x).clone()
    aligns = []
    for b, t in enumerate(tasks):
        a, bb, router = (p.detach() for p in layer.task_parameters(t))
        queries = {m: x[b][ids[b] == m].mean(0) for m in range(3) if (ids[b] == m).any()}
        proxy = torch.stack(list(queries.values())).mean(0)
        if 0 in queries and 1 in queries:
            aligns.append(1 - F.cosine_similarity(queries[1], queries[0], dim=0))
        for m in range(3):
            logits = router[m] @ queries.get(m, proxy)
            chosen = sorted(range(layer.pool_size), key=lambda e: -float(logits[e]))[: layer.rank]
            delta_w = sum(torch.outer(bb[:, m, e], a[m, e]) for e in chosen)
            rows = ids[b] == m
            out[b, rows] += layer.scaling * x[b, rows] @ delta_w.T
    return out, torch.stack(aligns).mean()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_equals_explicit_per_sample_computation(mode):
    model, layer, ctx = one_layer()
    ids = mixed_ids()
    x = torch.randn(*ids.shape, D_IN, generator=torch.Generator().manual_seed(4))
    ctx.set(ids)
    if mode == "train":
        start_task(model, 1)
        tasks = [1] * len(ids)
    else:  # keys placed so that samples 0, 2, 3 are nearest task 0's key and 1, 4 task 1's
        tasks = [0, 1, 0, 0, 1]
        with torch.no_grad():
            layer.task_keys.copy_(torch.randn(2, 3, D_IN) * 10)
            layer.key_seen.fill_(True)
        x = x + layer.task_keys[tasks].mean(1, keepdim=True)  # every modality query is then near that key
        model.eval()
    keys_before = layer.task_keys.clone()
    with torch.no_grad():
        got = model.q_proj(x)
    expected, align = reference(layer, x, ids, tasks)
    assert layer.last_task.tolist() == tasks
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux_loss(model), 0.5 * align)
    assert torch.equal(layer.task_keys, keys_before)  # no key update without grad / in eval


def test_decoding_steps_keep_the_prompts_routing():
    """A KV-cache decoding step continues its prompt: same task and gates as the prompt's forward, even where the new
    token alone would be nearest another task's key (which is what a plain text-only forward does)."""
    model, layer, ctx = one_layer()
    ids = mixed_ids()
    tasks = [0, 1, 0, 0, 1]
    with torch.no_grad():
        layer.task_keys.copy_(torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(5)) * 10)
        layer.key_seen.fill_(True)
    prompt = torch.randn(*ids.shape, D_IN) + layer.task_keys[tasks].mean(1, keepdim=True)
    new = torch.randn(len(ids), 1, D_IN) + layer.task_keys[[1 - t for t in tasks]].mean(1, keepdim=True)
    model.eval()
    ctx.set(ids)
    with torch.no_grad():
        model.q_proj(prompt)
    ctx.set_text(len(ids), 1, "cpu", decoding=True)
    with torch.no_grad():
        got = model.q_proj(new)
    assert layer.last_task.tolist() == tasks
    expected = layer.base_layer(new).clone()
    for b, t in enumerate(tasks):  # the prompt's text query (or its proxy) picks the text factors
        a, bb, router = (p.detach() for p in layer.task_parameters(t))
        present = [prompt[b][ids[b] == m].mean(0) for m in range(3) if (ids[b] == m).any()]
        query = prompt[b][ids[b] == 0].mean(0) if (ids[b] == 0).any() else torch.stack(present).mean(0)
        chosen = (router[0] @ query).topk(layer.rank).indices.tolist()
        delta_w = sum(torch.outer(bb[:, 0, e], a[0, e]) for e in chosen)
        expected[b] += layer.scaling * new[b] @ delta_w.T
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    ctx.set_text(len(ids), 1, "cpu")  # not a continuation: the token is routed from itself
    with torch.no_grad():
        model.q_proj(new)
    assert layer.last_task.tolist() == [1 - t for t in tasks]


def test_parameter_count_formula():
    model = tiny_llama()
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = attach(model, AdapterConfig(name="delo", rank=2, options={"tasks": 3, "pool_size": 6}))
    assert report.trainable_params == sum(3 * 3 * 6 * (2 * shapes[n][0] + shapes[n][1]) for n in report.layers)
    assert not DeLoLinear.mergeable


def test_task_keys_pick_each_tasks_pools_without_a_task_id():
    model, layer, ctx = one_layer()
    gen = torch.Generator().manual_seed(7)
    centers = [torch.full((D_IN,), 3.0), torch.full((D_IN,), -3.0)]
    ids = mixed_ids()
    ctx.set(ids)

    def batch(task: int) -> torch.Tensor:
        return centers[task] + torch.randn(*ids.shape, D_IN, generator=gen)

    model.train()
    for task in (0, 1):
        start_task(model, task)
        for _ in range(3):
            model.q_proj(batch(task)).sum().backward()
    assert layer.key_seen.all()
    model.eval()
    truth = torch.tensor([0, 1, 1, 0, 1])
    x = torch.stack([batch(int(t))[i] for i, t in enumerate(truth)])
    with torch.no_grad():
        got = model.q_proj(x)
    assert torch.equal(layer.last_task, truth)
    torch.testing.assert_close(got, reference(layer, x, ids, truth.tolist())[0], atol=1e-5, rtol=1e-5)


def test_proxy_queries_and_key_ema():
    model, layer, ctx = one_layer()
    ids = mixed_ids()
    ctx.set(ids)
    xs = [torch.randn(*ids.shape, D_IN, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    q, present = proxy_queries(xs[0], (ids.unsqueeze(-1) == torch.arange(3)).float())
    for b in range(len(ids)):
        real = {m: xs[0][b][ids[b] == m].mean(0) for m in range(3) if (ids[b] == m).any()}
        assert present[b].tolist() == [m in real for m in range(3)]
        for m in range(3):
            torch.testing.assert_close(q[b, m], real.get(m, torch.stack(list(real.values())).mean(0)))
    start_task(model, 1)
    for x in xs:
        model.q_proj(x)
    batch_keys = [proxy_queries(x, (ids.unsqueeze(-1) == torch.arange(3)).float())[0].mean(0) for x in xs]
    torch.testing.assert_close(layer.task_keys[1], 0.99 * batch_keys[0] + 0.01 * batch_keys[1])
    assert layer.key_seen.tolist() == [False, True] and not layer.task_keys[0].any()


def llama_with_delo(tasks: int = 2) -> tuple[nn.Module, ModalityContext, AdapterConfig]:
    model, ctx = tiny_llama(), ModalityContext()
    cfg = AdapterConfig(name="delo", rank=2, options={"tasks": tasks, "pool_size": 4})
    attach(model, cfg, ctx)
    randomize_adapters(model)
    return model, ctx, cfg


TOKENS = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))


def test_earlier_task_is_bit_frozen_while_a_later_one_trains():
    model, ctx, _ = llama_with_delo()
    ctx.set(modality_ids(*TOKENS.shape))
    mark_trainable(model)
    start_task(model, 1)
    layers = adapter_layers(model).values()
    assert all(not p.requires_grad for m in layers for p in m.task_parameters(0))
    assert all(p.requires_grad for m in layers for p in m.task_parameters(1))
    frozen = [p.detach().clone() for m in layers for p in m.task_parameters(0)]
    active = [p.detach().clone() for m in layers for p in m.task_parameters(1)]
    opt = torch.optim.AdamW(adapter_parameters(model).values(), lr=1e-2, weight_decay=0.1)  # all, even frozen
    for _ in range(3):
        loss = model(input_ids=TOKENS, labels=TOKENS).loss + aux_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(frozen, (p for m in layers for p in m.task_parameters(0))))
    assert all(not torch.equal(a, p) for a, p in zip(active, (p for m in layers for p in m.task_parameters(1))))


def test_router_gets_a_gradient_through_the_straight_through_gate():
    model, ctx, _ = llama_with_delo(tasks=1)
    ctx.set(modality_ids(*TOKENS.shape))
    model(input_ids=TOKENS, labels=TOKENS).loss.backward()
    for layer in adapter_layers(model).values():
        grad = layer.router0.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad.abs().sum(-1) > 0).all()  # every factor's row, selected or not


def test_save_load_is_exact_with_keys_and_active_task(tmp_path):
    model, ctx, cfg = llama_with_delo()
    ids = modality_ids(*TOKENS.shape)
    ctx.set(ids)
    start_task(model, 1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.task_keys.normal_()
            layer.key_seen.fill_(True)
    save_adapter(model, tmp_path, cfg)
    loaded, loaded_ctx = tiny_llama(), ModalityContext()
    load_adapter(loaded, tmp_path, loaded_ctx)
    loaded_ctx.set(ids)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=TOKENS).logits, loaded(input_ids=TOKENS).logits)


def test_run_export_keeps_the_frozen_tasks():
    """A run's export (what merge --keep-adapters reads) holds every task's pools, not only the trainable ones."""
    model, _, _ = llama_with_delo()
    mark_trainable(model)
    start_task(model, 1)
    exported = gather_trainables(model)
    assert adapter_state(model).keys() <= exported.keys()
    assert any(k.endswith(".pool_a0") for k in exported)


def test_run_export_reloads_with_keep_adapters(tmp_path, tiny_model_config):
    """In the composed model, on video+audio / image-only / audio-only / text-only samples: a run's export with
    task 1 active (task 0 frozen), kept unmerged by the merge step, reloads to the same logits."""
    model_cfg = tiny_model_config("llama")
    model = AVLLM.from_config(model_cfg)
    adapter = AdapterConfig(name="delo", rank=2, scope=["llm"], options={"tasks": 2, "pool_size": 4})
    attach(model, adapter)
    randomize_adapters(model)
    mark_trainable(model, ["projectors.*"])
    start_task(model, 1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.task_keys.normal_()
            layer.key_seen.fill_(True)
    write_trainables(model, adapter, tmp_path / "run/final")
    save_config(RunConfig(output_dir=str(tmp_path / "run"), stage=2, model=model_cfg, adapter=adapter),
                tmp_path / "run/config.yaml")
    with pytest.raises(MergeError, match="cannot be merged"):
        merge_run(tmp_path / "run", tmp_path / "merged")
    loaded = load_model(merge_run(tmp_path / "run", tmp_path / "kept", keep_adapters=True)).eval()
    model.eval()
    with torch.no_grad():
        expected = model(**model.build_processor()(mixed_samples())).logits
        got = loaded(**loaded.build_processor()(mixed_samples())).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_zero3_two_ranks_second_task_trains_and_first_stays_frozen(tmp_path):
    """start_task under ZeRO-3 (the training loop runs task 0 only: test_train_and_ship.py)."""
    report = run_two_ranks("ds_delo_check.py", tmp_path / "report.json")
    assert report["last"] < report["first"] - 0.2, report  # fixed batch: deterministic, no noise to ride on
    assert report["task0_unchanged"]
