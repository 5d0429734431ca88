"""The batch builder: placeholder expansion, label masking against the chat template, question span, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.modality import Modality, modality_ids
from pipeline.model.processor import IGNORE_INDEX, AVSample
from tests.model.conftest import mixed_samples


@pytest.fixture(scope="module")
def processor(model):
    return model.build_processor()


def test_placeholders_expand_to_feature_counts(model, processor):
    batch = processor(mixed_samples())
    per_image = processor.tokens_per_image
    per_window = processor.tokens_per_window
    ids = batch["input_ids"]
    tok = processor.token_ids
    counts = [{p: int((row == tok[p]).sum()) for p in tok} for row in ids]
    # 6 frames resampled to num_frames; 24000 samples = 2 windows of 1 s at 16 kHz; 9000 samples = 1 window
    assert counts[0] == {"<image>": 0, "<video>": processor.num_frames * per_image, "<audio>": 2 * per_window}
    assert counts[1] == {"<image>": per_image, "<video>": 0, "<audio>": 0}
    assert counts[2] == {"<image>": 0, "<video>": 0, "<audio>": per_window}
    assert counts[3] == {"<image>": 0, "<video>": 0, "<audio>": 0}
    assert batch["video_values"].shape[0] == processor.num_frames
    assert batch["image_values"].shape[0] == 1
    assert batch["audio_values"].shape[0] == 3
    # expanded tokens form one contiguous run per placeholder, in the order the text gives
    row = ids[0][batch["attention_mask"][0].bool()].tolist()
    first_video, first_audio = row.index(tok["<video>"]), row.index(tok["<audio>"])
    assert first_video < first_audio
    assert row[first_video:first_video + counts[0]["<video>"]] == [tok["<video>"]] * counts[0]["<video>"]


def test_padding_and_attention_mask(processor):
    encoded = [processor.encode(s) for s in mixed_samples()]
    lengths = [len(e.input_ids) for e in encoded]
    for side in ("right", "left"):
        batch = processor.collate(encoded, padding_side=side)
        assert batch["input_ids"].shape == (4, max(lengths))
        assert batch["attention_mask"].sum(1).tolist() == lengths
        for i, enc in enumerate(encoded):
            kept = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            assert kept == enc.input_ids
            pad_labels = batch["labels"][i][~batch["attention_mask"][i].bool()]
            assert (pad_labels == IGNORE_INDEX).all()
        if side == "left":
            assert (batch["attention_mask"][:, -1] == 1).all()


def test_labels_are_exactly_the_assistant_turns(processor):
    """Decoding the labelled tokens gives the answer plus the template's end-of-turn text, nothing else."""
    tokenizer = processor.tokenizer
    for sample in mixed_samples():
        enc = processor.encode(sample)
        labelled = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
        assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(enc.input_ids, enc.labels))
        messages = [{"role": "user", "content": sample.conversations[0]["value"]}]
        before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": sample.conversations[1]["value"]}], tokenize=False)
        assert tokenizer.decode(labelled) == through[len(before):]
        assert sample.conversations[1]["value"] in tokenizer.decode(labelled)
        # labelled tokens form one contiguous run at the end of the sample
        first = enc.labels.index(labelled[0])
        assert all(lab != IGNORE_INDEX for lab in enc.labels[first:])


def test_multi_turn_labels_cover_every_answer(processor):
    sample = AVSample([{"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": "red"},
                       {"from": "human", "value": "How many beeps?"}, {"from": "gpt", "value": "three beeps"}],
                      images=[np.zeros((32, 32, 3), np.uint8)])
    enc = processor.encode(sample)
    text = processor.tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])
    assert "red" in text and "three beeps" in text and "Describe" not in text and "How many" not in text


def test_question_span_marks_the_question_text_only(processor):
    enc = processor.encode(mixed_samples()[0])
    question = processor.tokenizer.decode([t for t, q in zip(enc.input_ids, enc.question) if q])
    assert question.strip() == "How many beeps are there?"


def test_modality_map_from_token_ids(model, processor):
    batch = processor(mixed_samples())
    ids = modality_ids(batch["input_ids"], batch["attention_mask"], model.media_tokens)
    tok = processor.token_ids
    assert (ids[batch["input_ids"] == tok["<audio>"]] == Modality.AUDIO).all()
    visual = (batch["input_ids"] == tok["<video>"]) | (batch["input_ids"] == tok["<image>"])
    assert (ids[visual] == Modality.VISUAL).all()
    assert (ids[batch["attention_mask"] == 0] == Modality.PAD).all()
    text = batch["attention_mask"].bool() & ~visual & (batch["input_ids"] != tok["<audio>"])
    assert (ids[text] == Modality.TEXT).all()
    assert ids[3].ne(Modality.VISUAL).all() and ids[3].ne(Modality.AUDIO).all()


def test_long_audio_gets_max_windows_spread_over_the_clip(processor):
    audio = np.arange(16000 * 30, dtype=np.float32)
    windows = processor._audio_windows(audio)
    assert len(windows) == processor.max_windows
    assert all(len(w) == processor.window_samples for w in windows)
    assert windows[0][0] == 0 and windows[-1][-1] == len(audio) - 1


@pytest.mark.parametrize("sample, message", [
    (AVSample([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}], meta={"id": "s1"}),
     "sample s1: 1 '<image>' placeholder(s) but 0 image input(s)"),
    (AVSample([{"from": "human", "value": "What?"}, {"from": "gpt", "value": "x"}],
              audio=np.zeros(100, np.float32), meta={"id": "s2"}),
     "sample s2: 0 '<audio>' placeholder(s) but 1 audio input(s)"),
    (AVSample([{"from": "gpt", "value": "x"}], meta={"id": "s3"}), "sample s3: the conversation has no human turn"),
    (AVSample([{"from": "robot", "value": "x"}], meta={"id": "s4"}), "sample s4: conversations[0] needs 'from'"),
])
def test_bad_samples_raise_one_line_errors_naming_the_sample(processor, sample, message):
    with pytest.raises(ValueError) as info:
        processor.encode(sample)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_too_long_sample_is_refused(processor):
    sample = AVSample([{"from": "human", "value": "word " * 3000}, {"from": "gpt", "value": "x"}], meta={"id": "long"})
    with pytest.raises(ValueError, match="sample long: .* exceed model.max_length"):
        processor.encode(sample)


def test_generation_prompt_has_no_labels(processor):
    batch = processor(mixed_samples(generation=True), padding_side="left")
    assert (batch["labels"] == IGNORE_INDEX).all()
    assert torch.equal(batch["attention_mask"][:, -1], torch.ones(4, dtype=torch.long))
