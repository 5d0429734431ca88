"""Tiny random-init components on disk, loaded by tests and the demo through the code a real checkpoint takes.

    python -m pipeline.testing.tiny --out DIR [--llm llama|qwen2|qwen3]

writes DIR/vision (CLIPVisionModel + image processor), DIR/audio (a full Whisper encoder-decoder checkpoint + feature
extractor, as a user's would be), DIR/llm (causal LM + a byte-level BPE tokenizer trained on a built-in corpus, with
the family's chat template) and DIR/model.yaml (a `model` config section pointing at them). Takes about a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from pipeline.testing.pretrain import pretrain_llm

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FAMILIES = {
    # family: (config model_type, special tokens (bos, eos, unk, pad), chat template, default system prompt)
    "llama": ("llama", ("<s>", "</s>", "<unk>", "<unk>"), LLAMA2_TEMPLATE),
    "qwen2": ("qwen2", (None, "<|im_end|>", None, "<|endoftext|>"), CHATML_TEMPLATE.replace("default_system", "true")),
    "qwen3": ("qwen3", (None, "<|im_end|>", None, "<|endoftext|>"), CHATML_TEMPLATE.replace("default_system", "false")),
}

CORPUS = """
What colour is the shape? The shape is red. The shape is green. The shape is blue. The shape is yellow.
How many beeps are there? There are one two three four five six seven eight nine ten beeps. zero 0 1 2 3 4 5 6 7 8 9 10
Which side does the sound come from first? left right. Is the sound before or after the flash? before after.
Which instrument is louder? Is the instrument on the left louder than the one on the right? yes no
What is the first instrument that comes in? Where is the performance? indoor outdoor. Is this sound from the
instrument in the video? How many instruments are sounding in the video? How many types of musical instruments
sound in the video? Which is the musical instrument that sounds at the same time as the piano? simultaneously
accordion acoustic_guitar acoustic guitar bagpipe banjo bassoon cello clarinet congas drum electric_bass erhu flute
guzheng piano pipa saxophone suona trumpet tuba ukulele violin xylophone bass guitar
Describe the image. Describe the video. Describe the audio. A dog barks. A car passes by. A man speaks. Music plays.
An event happens from second 0 to second 10. The event is a church bell, a male speaking, a dog barking, a train horn.
Answer the question using a single word or phrase. Answer with the option's letter from the given choices directly.
Is there a cat in the image? Is there a person in the image? A. B. C. D. E. circle square triangle diamond cross
Is there a circle in the image? Which shape is red? Where is the square? top left top right bottom left bottom right
How many shapes are in the image? What colour is the triangle? one two three four
The quick brown fox jumps over the lazy dog. Please answer the question about the video and the audio.
"""


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (any text encodes) with the family's special tokens and chat template."""
    _, (bos, eos, unk, pad), template = FAMILIES[family]
    specials = [t for t in dict.fromkeys((bos, eos, unk, pad)) if t is not None]
    if family != "llama":
        specials.append("<|im_start|>")
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        chat_template=template,
        model_max_length=4096,
    )


def build_llm(family: str, tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2):
    model_type = FAMILIES[family][0]
    config = AutoConfig.for_model(
        model_type,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_tiny(
    out: str | Path,
    llm: str = "llama",
    seed: int = 0,
    image_size: int = 64,
    pretrain_steps: int = 0,
    progress: bool = False,
) -> Path:
    """Write every tiny component under `out` and return the path of its `model.yaml`.

    `pretrain_steps` > 0 first trains the LLM on chat-formatted short questions (see PRETRAIN_QA): a random LLM
    frozen under an adapter learns next to nothing in a CPU demo's budget, a lightly pretrained one does.
    `progress` shows a progress bar over those steps.
    """
    out = Path(out)
    torch.manual_seed(seed)
    vision_cfg = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=16,
        projection_dim=64,
    )
    CLIPVisionModel(vision_cfg).save_pretrained(out / "vision")
    # the PIL backend by name: the default one needs torchvision (a notice without it); the saved file is the same
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out / "vision")

    audio_cfg = WhisperConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,
        max_source_positions=100,
        max_target_positions=64,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    whisper = WhisperForConditionalGeneration(audio_cfg)
    # At random init the convolution outputs are ~100x smaller than the sinusoidal position table, so a random tiny
    # Whisper's output barely depends on the audio (measured: beep counting stays at chance). A real Whisper's
    # learned features dominate; for the tiny stand-in the table is zeroed so the content gets through.
    with torch.no_grad():
        whisper.model.encoder.embed_positions.weight.zero_()
    whisper.save_pretrained(out / "audio")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out / "audio")

    tokenizer = build_tokenizer(llm)
    tokenizer.save_pretrained(out / "llm")
    model = build_llm(llm, tokenizer)
    if pretrain_steps:
        pretrain_llm(model, tokenizer, pretrain_steps, seed, progress=progress)
    model.save_pretrained(out / "llm")

    model_yaml = out / "model.yaml"
    model_yaml.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "llm": str(out / "llm"),
                    "vision": str(out / "vision"),
                    "audio": str(out / "audio"),
                    "num_frames": 4,
                    "audio_window_seconds": 1.0,
                    "audio_max_windows": 4,
                    "max_length": 1024,
                }
            },
            sort_keys=False,
        )
    )
    return model_yaml


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory to write the components into")
    parser.add_argument("--llm", default="llama", choices=sorted(FAMILIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=0, help="LM steps on chat-formatted short questions")
    args = parser.parse_args(argv)
    print(f"wrote {write_tiny(args.out, args.llm, args.seed, pretrain_steps=args.pretrain_steps)}")


if __name__ == "__main__":
    main()
