"""The composed model: splicing, gradients, generation with KV cache and left padding, save/load."""

from __future__ import annotations

import torch

from pipeline.model.avllm import AVLLM
from pipeline.modality import Modality
from tests.model.conftest import mixed_samples


def test_features_land_at_placeholder_positions_in_order(model):
    processor = model.build_processor()
    batch = processor(mixed_samples())
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["image_values"], batch["video_values"], batch["audio_values"])
        text_embeds = model.llm.get_input_embeddings()(batch["input_ids"])
        image = model.projectors["vision"](model.vision(batch["image_values"])).flatten(0, 1)
        video = model.projectors["vision"](model.vision(batch["video_values"])).flatten(0, 1)
        audio = model.projectors["audio"](model.audio(batch["audio_values"])).flatten(0, 1)
    tok = processor.token_ids
    ids = batch["input_ids"]
    torch.testing.assert_close(embeds[ids == tok["<image>"]], image, rtol=0, atol=0)
    torch.testing.assert_close(embeds[ids == tok["<video>"]], video, rtol=0, atol=0)
    torch.testing.assert_close(embeds[ids == tok["<audio>"]], audio, rtol=0, atol=0)
    text = ~((ids == tok["<image>"]) | (ids == tok["<video>"]) | (ids == tok["<audio>"]))
    torch.testing.assert_close(embeds[text], text_embeds[text], rtol=0, atol=0)
    # sample 0's audio windows come first in the flattened audio features, then sample 2's
    per_window = processor.tokens_per_window
    torch.testing.assert_close(embeds[2][ids[2] == tok["<audio>"]], audio[2 * per_window:], rtol=0, atol=0)


def test_forward_sets_the_modality_map_for_adapters(model):
    batch = model.build_processor()(mixed_samples())
    with torch.no_grad():
        model(**batch)
    ctx = model.modality_contexts["llm"]
    assert ctx.ids.shape == batch["input_ids"].shape
    assert (ctx.ids[batch["input_ids"] == model.token_id["<audio>"]] == Modality.AUDIO).all()
    assert torch.equal(ctx.question, batch["question_mask"])
    assert model.modality_contexts["vision"].ids_for(torch.zeros(2, 5, 8)).eq(Modality.VISUAL).all()


def test_forward_backward_trains_projectors_only(model):
    model.train()
    batch = model.build_processor()(mixed_samples())
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("projectors."):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    model.zero_grad(set_to_none=True)
    model.eval()


def test_loss_matches_manual_cross_entropy_on_answer_tokens(model):
    batch = model.build_processor()(mixed_samples())
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)


def test_batch_without_a_modality_still_runs_every_encoder(model):
    """A rank whose batch has no audio or video must still call the towers (ZeRO-3 collectives stay in step)."""
    calls = []
    hooks = [tower.register_forward_hook(lambda *_: calls.append(1)) for tower in (model.vision, model.audio)]
    batch = model.build_processor()(mixed_samples()[3:])
    assert batch["audio_values"] is None and batch["video_values"] is None and batch["image_values"] is None
    model.train()
    out = model(**batch)
    out.loss.backward()
    for h in hooks:
        h.remove()
    assert len(calls) == 2
    assert all(p.grad is not None for p in model.projectors.parameters())  # zero, but present on every rank
    model.zero_grad(set_to_none=True)
    model.eval()


def greedy_without_cache(model, sample_batch, steps: int) -> list[int]:
    """Reference decoding: recompute the whole sequence at every step, no KV cache."""
    ids = sample_batch["input_ids"]
    mask = sample_batch["attention_mask"]
    out = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, image_values=sample_batch["image_values"],
                           video_values=sample_batch["video_values"], audio_values=sample_batch["audio_values"],
                           use_cache=False).logits[0, -1]
        for t in model.media_tokens:
            logits[t] = float("-inf")
        nxt = int(logits.argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1)
    return out


def test_generate_with_cache_equals_recompute_and_ignores_left_padding(model):
    processor = model.build_processor()
    samples = mixed_samples(generation=True)
    steps = 6
    batched = model.generate(**processor(samples, padding_side="left"), max_new_tokens=steps, min_new_tokens=steps)
    for i, sample in enumerate(samples):
        alone = processor([sample], padding_side="left")
        single = model.generate(**alone, max_new_tokens=steps, min_new_tokens=steps)[0].tolist()
        assert single == greedy_without_cache(model, alone, steps), sample.meta["id"]
        assert batched[i].tolist() == single, sample.meta["id"]
    # after decoding, the map seen by adapters is the text map of the last new token
    assert model.modality_contexts["llm"].ids.eq(Modality.TEXT).all()


def test_decoding_steps_are_flagged_as_continuations(model):
    """Per-sample routed adapters (DeLo) keep the prompt's routing on exactly the KV-cache decoding steps."""
    seen = []
    layer = model.llm.get_decoder().layers[0]
    hook = layer.register_forward_pre_hook(lambda *_: seen.append(model.modality_contexts["llm"].decoding))
    try:
        processor = model.build_processor()
        model.generate(**processor(mixed_samples(generation=True)[:2], padding_side="left"), max_new_tokens=4,
                       min_new_tokens=4)
        assert seen == [False, True, True, True]
        model(**processor(mixed_samples()[:2]))
        assert seen[-1] is False
    finally:
        hook.remove()


def test_save_pretrained_round_trip(model, tmp_path):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.projectors.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").rglob("*.bin")) and not list((tmp_path / "ckpt").rglob("*.pt"))
    loaded = AVLLM.from_pretrained(tmp_path / "ckpt").eval()
    batch = model.build_processor()(mixed_samples())
    assert loaded.build_processor()(mixed_samples())["input_ids"].equal(batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
