"""The per-token modality map, and the context that hands it to adapter layers.

Adapters live inside `nn.Linear` layers deep in a transformers model, where no batch metadata reaches them. The
composed model therefore writes the map of the batch in flight into a `ModalityContext` it shares with its adapter
layers. The map is set once per LLM forward and *kept until the next forward*: activation recomputation (gradient
checkpointing) runs during backward, after the forward returned, and must see the map of the pass it recomputes.
During KV-cache decoding the new tokens are text; the model sets a text map for those steps.
"""

from __future__ import annotations

from enum import IntEnum

import torch
import torch.nn.functional as F


class Modality(IntEnum):
    """Per-token modality ids. PAD marks padded positions (attention mask 0)."""

    PAD = -1
    TEXT = 0
    VISUAL = 1
    AUDIO = 2


MODALITIES = 3  # TEXT, VISUAL, AUDIO: the ids 0, 1, 2 (index per-modality stacks of adapter weights)


def modality_onehot(ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., 3] indicator of each token's modality; PAD (-1) rows are all zero."""
    return F.one_hot(ids + 1, MODALITIES + 1)[..., 1:].to(dtype)


def modality_rows(ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 indicators (same shape as ids) of text and of non-text (visual or audio) positions; PAD is neither."""
    text = (ids == int(Modality.TEXT)).to(dtype)
    other = ((ids == int(Modality.VISUAL)) | (ids == int(Modality.AUDIO))).to(dtype)
    return text, other


class ModalityContext:
    """Holds the modality map (ids [B, T] and question flags [B, T]) of the current forward.

    `default` is the modality reported when no map was set: TEXT for an LLM used on its own, VISUAL or AUDIO for an
    encoder tower (every token of the vision tower is visual).
    """

    def __init__(self, default: Modality = Modality.TEXT) -> None:
        self.default = Modality(default)
        self.ids: torch.Tensor | None = None
        self.question: torch.Tensor | None = None
        self.decoding = False

    def set(self, ids: torch.Tensor, question: torch.Tensor | None = None) -> None:
        if ids.dim() != 2:
            raise ValueError(f"modality ids must be [batch, seq], got shape {tuple(ids.shape)}")
        if question is not None and question.shape != ids.shape:
            raise ValueError(f"question mask shape {tuple(question.shape)} != modality ids shape {tuple(ids.shape)}")
        self.ids = ids
        self.question = question if question is not None else torch.zeros_like(ids, dtype=torch.bool)
        self.decoding = False

    def set_text(self, batch: int, seq_len: int, device: torch.device | str, decoding: bool = False) -> None:
        """Map for a forward over text tokens only: text-only inputs, or (`decoding`) the new tokens of a KV-cache
        decoding step, which continue the sequence of the previous forward (adapters that route per sample keep
        that forward's routing)."""
        self.set(torch.full((batch, seq_len), int(Modality.TEXT), dtype=torch.long, device=device))
        self.decoding = decoding

    def clear(self) -> None:
        self.ids = None
        self.question = None
        self.decoding = False

    @staticmethod
    def _checked(per_token: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1] != per_token.shape:
            raise RuntimeError(
                f"modality map is {tuple(per_token.shape)} but the layer input is {tuple(x.shape[:-1])}: "
                "the map was not set for this forward (set it with ModalityContext.set before calling the model)"
            )
        return per_token

    def ids_for(self, x: torch.Tensor) -> torch.Tensor:
        """Modality ids [*x.shape[:-1]] for a layer input x of shape [B, T, d] (or [N, d] for encoder towers)."""
        if self.ids is None:
            return torch.full(x.shape[:-1], int(self.default), dtype=torch.long, device=x.device)
        return self._checked(self.ids, x)

    def question_for(self, x: torch.Tensor) -> torch.Tensor:
        """Question-span flags [*x.shape[:-1]] (all False when no map or no question span was set)."""
        if self.ids is None or self.question is None:
            return torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        return self._checked(self.question, x)


def modality_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, media_tokens: dict[int, Modality]
) -> torch.Tensor:
    """Per-token modality ids read off the (placeholder-expanded) token ids; padded positions are PAD."""
    ids = torch.full_like(input_ids, int(Modality.TEXT))
    for token, modality in media_tokens.items():
        ids[input_ids == token] = int(modality)
    if attention_mask is not None:
        ids[attention_mask == 0] = int(Modality.PAD)
    return ids
