"""AVLLM: frozen vision and audio encoders, trainable projectors, and a causal LLM that reads their features.

The processor has already expanded every media placeholder to one token per feature vector; here each modality's
features are computed, projected to the LLM width and written over its placeholder positions with `masked_scatter`.
Before the LLM runs, the per-token modality map goes into `modality_contexts["llm"]`, where adapter layers read it.

Saved layout (`save_pretrained`), readable by `from_pretrained` and, for `llm/`, by stock transformers:
    avllm.json               the model config, component paths relative to the directory
    llm/                     transformers causal LM + tokenizer (media tokens and chat template included)
    vision/, audio/          encoder weights + their image processor / feature extractor
    projectors.safetensors   the projectors' weights
    adapter/                 optional: an adapter kept unmerged (`launch/merge.py --keep-adapters`), in the format of
                             `pipeline.adapters.io`, whose `load_model` attaches it; `from_pretrained` loads the
                             base model only, and refuses such a checkpoint unless asked for the base
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from pipeline.config import from_dict, to_dict
from pipeline.modality import Modality, ModalityContext, modality_ids
from pipeline.model.config import CHECKPOINT_KEYS, ModelConfig
from pipeline.model.encoders import Tower, load_tower
from pipeline.model.hub import local_dir
from pipeline.model.loss import chunked_lm_loss, packed_positions, row_segments, shift_targets
from pipeline.model.packing import attention_break_even
from pipeline.model.processor import PLACEHOLDERS, AVProcessor
from pipeline.model.projectors import build_projector, tokens_out

CONFIG_FILE = "avllm.json"
PROJECTORS_FILE = "projectors.safetensors"
KEPT_ADAPTER_DIR = "adapter"  # written and read by pipeline.adapters.io


def load_tokenizer(cfg: ModelConfig):
    """The LLM's tokenizer with the media placeholders added as special tokens, a pad token and a chat template."""
    path = local_dir(cfg.tokenizer) if cfg.tokenizer else cfg.llm_dir
    tokenizer = AutoTokenizer.from_pretrained(path)
    if cfg.chat_template is not None:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: the tokenizer has no chat template; set model.chat_template in the config")
    new = [p for p in PLACEHOLDERS if p not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def vocab_size(llm: PreTrainedModel) -> int:
    """Rows of the LLM's input embedding."""
    return cast(nn.Embedding, llm.get_input_embeddings()).num_embeddings


def empty_llm(config: PretrainedConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The causal LM of `config` with its weights on the meta device: shapes and names, no memory."""
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def check_packed_call(attention_mask: torch.Tensor | None, llm_kwargs: dict) -> None:
    """Refuse a packed batch with any argument that makes transformers skip its block-diagonal mask."""
    if attention_mask is not None:
        raise ValueError("a packed batch (segment_ids) must not carry an attention_mask: attention would leak")
    for key in ("position_ids", "past_key_values", "cache"):
        if llm_kwargs.get(key) is not None:
            raise ValueError(f"a packed batch (segment_ids) derives its own position ids and uses no cache; got {key}")
    if llm_kwargs.get("use_cache"):
        raise ValueError("a packed batch (segment_ids) must run with use_cache=False: attention would leak")


class AVLLM(nn.Module):
    llm: Any  # a transformers causal LM (PreTrainedModel + GenerationMixin), typed loosely by transformers itself

    def __init__(self, cfg: ModelConfig, llm: PreTrainedModel | None = None, weights: bool = True) -> None:
        """Compose from the checkpoints in `cfg`; `llm` replaces loading `cfg.llm` (the merge passes a meta-device
        skeleton so that a 7B LLM is never materialised: it streams the LLM's weights itself). `weights=False` builds
        the whole model on the meta device from the configs and the tokenizer alone (planning memory)."""
        super().__init__()
        self.config = cfg
        dtype = cfg.torch_dtype
        self.tokenizer = load_tokenizer(cfg)
        if llm is None:
            llm = (
                AutoModelForCausalLM.from_pretrained(
                    cfg.llm_dir, dtype=dtype, attn_implementation=cfg.attn_implementation
                )
                if weights
                else empty_llm(AutoConfig.from_pretrained(cfg.llm_dir), dtype)
            )
        self.llm = llm
        self._add_token_rows(len(self.tokenizer))
        width = self.llm.config.get_text_config().hidden_size
        self.vision = load_tower("vision", local_dir(cfg.vision), cfg, weights) if cfg.vision else None
        self.audio = load_tower("audio", local_dir(cfg.audio), cfg, weights) if cfg.audio else None
        self.projectors = nn.ModuleDict()
        with init_empty_weights(include_buffers=True) if not weights else contextlib.nullcontext():
            for name, tower, kind in (
                ("vision", self.vision, cfg.vision_projector),
                ("audio", self.audio, cfg.audio_projector),
            ):
                if tower is not None:
                    self.projectors[name] = build_projector(
                        kind, tower.hidden_size, width, cfg.qformer_queries, cfg.qformer_layers
                    ).to(dtype)
        for part in (self.llm, self.vision, self.audio):
            for p in part.parameters() if part is not None else ():
                p.requires_grad_(False)
        self.media_tokens = {self.tokenizer.convert_tokens_to_ids(p): m for p, m in PLACEHOLDERS.items()}
        self.token_id = {p: self.tokenizer.convert_tokens_to_ids(p) for p in PLACEHOLDERS}
        self.modality_contexts = {
            "llm": ModalityContext(Modality.TEXT),
            "vision": ModalityContext(Modality.VISUAL),
            "audio": ModalityContext(Modality.AUDIO),
        }
        self.llm.get_decoder().register_forward_pre_hook(self._text_map_for_token_inputs, with_kwargs=True)

    # ---- construction -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _add_token_rows(self, vocab: int) -> None:
        """Grow the embedding (and untied head) to the tokenizer with rows set to the mean of the old rows.

        Deterministic on purpose: every composition of the same base (stage 1, stage 2, merge, eval) must have the
        same rows, or the head's logits for the media tokens (part of every softmax) would differ between them.
        """
        old = vocab_size(self.llm)
        if vocab <= old:
            return
        self.llm.resize_token_embeddings(vocab, mean_resizing=False)
        for layer in (self.llm.get_input_embeddings(), self.llm.get_output_embeddings()):
            if layer is not None:
                weight = cast(torch.Tensor, layer.weight)
                weight[old:] = weight[:old].mean(0, keepdim=True)

    @classmethod
    def skeleton(cls, cfg: ModelConfig) -> AVLLM:
        """The composed model with the LLM and the encoders on the meta device, built from their configs: every
        module name and shape, and the towers' own checks (pooling, windows), without reading a weight. What the
        pre-flight checks attach adapters to."""
        return cls(cfg, weights=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> AVLLM:
        """Compose from base checkpoints (fresh projectors): the start of stage 1."""
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, base_only: bool = False, **overrides) -> AVLLM:
        """Load a directory written by `save_pretrained` (e.g. a merged checkpoint), or a Hub id of one. A checkpoint
        that carries an unmerged adapter is refused unless `base_only` (its base model is wanted): load it with
        `pipeline.adapters.io.load_model`."""
        path = local_dir(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path}: not an AVLLM checkpoint (no {CONFIG_FILE})")
        if (path / KEPT_ADAPTER_DIR).is_dir() and not base_only:
            raise ValueError(
                f"{path}: carries an unmerged adapter ({KEPT_ADAPTER_DIR}/); load it with "
                "pipeline.adapters.io.load_model"
            )
        data = json.loads((path / CONFIG_FILE).read_text())
        for key in CHECKPOINT_KEYS:
            if data.get(key):
                data[key] = str(path / data[key])
        data.update(overrides)
        model = cls(from_dict(ModelConfig, data, where=str(path / CONFIG_FILE)))
        model.projectors.load_state_dict(load_file(path / PROJECTORS_FILE))
        return model

    def save_pretrained(self, path: str | Path, llm_weights: bool = True, max_shard_size: str = "2GB") -> None:
        """Write the layout in the module docstring. `llm_weights=False` leaves out the LLM's config and weights
        (the merge streams them into `llm/` itself) but still writes the tokenizer there."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if llm_weights:
            self.llm.save_pretrained(path / "llm", max_shard_size=max_shard_size)
        self.tokenizer.save_pretrained(path / "llm")
        cfg = dataclasses.replace(self.config, llm="llm", tokenizer=None, chat_template=None)
        if self.vision is not None:
            self.vision.save_pretrained(path / "vision", max_shard_size)
            cfg.vision = "vision"
        if self.audio is not None:
            self.audio.save_pretrained(path / "audio", max_shard_size)
            cfg.audio = "audio"
        save_file({k: v.contiguous() for k, v in self.projectors.state_dict().items()}, path / PROJECTORS_FILE)
        (path / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2))

    def build_processor(self) -> AVProcessor:
        cfg = self.config
        return AVProcessor(
            self.tokenizer,
            image_processor=self.vision.build_preprocessor() if self.vision else None,
            audio_processor=self.audio.build_preprocessor() if self.audio else None,
            tokens_per_image=tokens_out(cfg.vision_projector, self.vision.tokens_per_item, cfg.qformer_queries)
            if self.vision
            else 0,
            num_frames=cfg.num_frames,
            tokens_per_window=tokens_out(cfg.audio_projector, self.audio.tokens_per_item, cfg.qformer_queries)
            if self.audio
            else 0,
            window_samples=int(round(cfg.audio_window_seconds * self.audio.sample_rate)) if self.audio else 0,
            max_windows=cfg.audio_max_windows,
            max_length=cfg.max_length,
            attention_break_even=attention_break_even(self.llm.config),
        )

    # ---- forward ----------------------------------------------------------------------------------------------

    def _text_map_for_token_inputs(self, module, args, kwargs):
        """KV-cache decoding feeds new token ids (never spliced media): those positions are text."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and kwargs.get("inputs_embeds") is None:
            past = kwargs.get("cache", kwargs.get("past_key_values"))  # newer transformers: `cache`
            decoding = past is not None and past.get_seq_length() > 0
            self.modality_contexts["llm"].set_text(*input_ids.shape, device=input_ids.device, decoding=decoding)

    def _project(self, name: str, tower: Tower, values: torch.Tensor | None) -> torch.Tensor:
        """Features [items, tokens, width] of one modality. Frozen towers run without autograd."""
        if values is None:  # keep every rank's collectives in step: run the tower on a dummy input
            values = tower.dummy_input().to(next(tower.parameters()).device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
            feats = tower(values)
        return self.projectors[name](feats)

    def embed(
        self,
        input_ids: torch.Tensor,
        image_values: torch.Tensor | None = None,
        video_values: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with every media placeholder replaced by its projected feature vector."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        parts = []
        if self.vision is not None:
            visual = [v for v in (image_values, video_values) if v is not None]
            feats = self._project("vision", self.vision, torch.cat(visual) if visual else None)
            n_images = 0 if image_values is None else image_values.shape[0]
            parts.append(("<image>", feats[:n_images] if image_values is not None else None, feats))
            parts.append(("<video>", feats[n_images:] if video_values is not None else None, feats))
        if self.audio is not None:
            feats = self._project("audio", self.audio, audio_values)
            parts.append(("<audio>", feats if audio_values is not None else None, feats))
        for placeholder, chosen, computed in parts:
            mask = input_ids == self.token_id[placeholder]
            if chosen is None:
                if mask.any():
                    raise ValueError(f"the batch has {placeholder} tokens but no {placeholder.strip('<>')} values")
                embeds = embeds + computed.sum() * 0  # dummy pass: zero gradient, but the graph touches it
                continue
            flat = chosen.reshape(-1, chosen.shape[-1]).to(embeds.dtype)
            if int(mask.sum()) != flat.shape[0]:
                raise ValueError(
                    f"{int(mask.sum())} {placeholder} tokens but {flat.shape[0]} feature vectors: "
                    "the processor and the model disagree on tokens per item"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), flat)
        for placeholder in PLACEHOLDERS:
            if not any(p == placeholder for p, _, _ in parts) and (input_ids == self.token_id[placeholder]).any():
                raise ValueError(f"the batch has {placeholder} tokens but the model has no encoder for them")
        return embeds

    def set_modality_map(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        question_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> None:
        mask = attention_mask if segment_ids is None else (segment_ids >= 0)
        self.modality_contexts["llm"].set(modality_ids(input_ids, mask, self.media_tokens), question_mask, segment_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        image_values: torch.Tensor | None = None,
        video_values: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        num_items_in_batch: float | torch.Tensor | None = None,
        loss_chunk_tokens: int = 0,
        **llm_kwargs,
    ) -> CausalLMOutputWithPast:
        """A padded batch (`attention_mask`) or a packed one (`segment_ids`, from `AVProcessor.pack`: rows holding
        several samples). A packed batch is run on transformers' packed-sequence path: position ids restarting at
        every sample, no attention mask and no cache, which is the only call that builds the block-diagonal mask
        (any other call lets attention leak across samples silently, so it is refused).

        With `labels`, the loss is Σ token losses / `num_items_in_batch` (default: the number of label tokens);
        `loss_chunk_tokens` > 0 computes it over the label positions only, in chunks, and returns no logits
        (`pipeline.model.loss`)."""
        embeds = self.embed(input_ids, image_values, video_values, audio_values)
        if segment_ids is not None:
            check_packed_call(attention_mask, llm_kwargs)
            llm_kwargs.update(position_ids=packed_positions(segment_ids), use_cache=False)
            segments = segment_ids
        else:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            segments = row_segments(mask)
        self.set_modality_map(input_ids, attention_mask, question_mask, segments)
        if labels is None:
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)
        targets = shift_targets(labels, segments)
        if loss_chunk_tokens:
            hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, **llm_kwargs)[0]
            head = self.llm.get_output_embeddings()
            loss = chunked_lm_loss(hidden, head, targets, self.llm.config, loss_chunk_tokens, num_items_in_batch)
            return CausalLMOutputWithPast(loss=loss)
        if num_items_in_batch is not None:
            llm_kwargs["num_items_in_batch"] = num_items_in_batch
        return self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, shift_labels=targets, **llm_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        question_mask: torch.Tensor | None = None,
        image_values: torch.Tensor | None = None,
        video_values: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        **gen_kwargs,
    ) -> torch.Tensor:
        """Greedy (by default) batched generation with KV cache on a left-padded batch; returns the new tokens."""
        embeds = self.embed(input_ids, image_values, video_values, audio_values)
        self.set_modality_map(input_ids, attention_mask, question_mask)
        eos = self.llm.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {self.tokenizer.eos_token_id}
        gen_kwargs.setdefault("do_sample", False)
        return self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=self.tokenizer.pad_token_id,
            bad_words_ids=[[t] for t in self.media_tokens],
            **gen_kwargs,
        )

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
