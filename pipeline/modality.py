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


def row_segments(ids: torch.Tensor) -> torch.Tensor:
    """Sample index per token for a batch of one sample per row: the row index, -1 at PAD positions."""
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(-1).expand_as(ids)
    return torch.where(ids == int(Modality.PAD), -1, rows)


class SampleLayout:
    """Where each sample of a batch sits: maps a tensor in token layout [B, T, ...] to the per-sample layout
    [S, L, ...] (sample s's tokens in order, right-padded to the longest sample L) and back.

    A packed row holds several samples; adapters whose maths is per sample (means over a sample's tokens, attention
    within a sample, per-sample routing) compute in the per-sample layout, where a packed batch is exactly the
    right-padded batch of the same samples. Slots past a sample's end must be treated as PAD (`to_samples(ids,
    PAD)` marks them so; their values are not read). For a batch of one sample per row (`identity`), both maps
    return their input unchanged. `memo` caches what an adapter derives once per map (every layer sees the same).
    """

    def __init__(self, segments: torch.Tensor) -> None:
        self.memo: dict = {}
        self.shape = tuple(segments.shape)
        flat = segments.reshape(-1)
        rows = torch.arange(self.shape[0], device=segments.device).unsqueeze(-1).expand(self.shape).reshape(-1)
        self.identity = bool(((flat == -1) | (flat == rows)).all())
        if self.identity:
            self.samples, self.length = self.shape[0], self.shape[-1]
            self.segments = segments
            return
        kept = flat >= 0
        self.samples = int(flat.max()) + 1 if bool(kept.any()) else 0
        counts = torch.bincount(flat[kept], minlength=self.samples)
        self.length = int(counts.max()) if self.samples else 0
        tokens = kept.nonzero().squeeze(-1)
        seg = flat[tokens]
        order = torch.argsort(seg, stable=True)  # tokens grouped by sample, in sequence order within a sample
        tokens, seg = tokens[order], seg[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = seg * self.length + torch.arange(len(seg), device=seg.device) - starts[seg]
        n_slots = self.samples * self.length
        # gather index of every sample slot into the flat tokens (+ one zero row at the end for empty slots)
        self.gather = torch.full((n_slots,), flat.numel(), dtype=torch.long, device=segments.device)
        self.gather[slot] = tokens
        # and of every token into the flat slots (+ one zero row at the end for PAD tokens)
        self.scatter = torch.full((flat.numel(),), n_slots, dtype=torch.long, device=segments.device)
        self.scatter[tokens] = slot
        self.segments = segments

    def to_samples(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """[B, T, ...] -> [S, L, ...]; empty slots hold `fill`."""
        if self.identity:
            return x
        flat = x.reshape(-1, *x.shape[len(self.shape) :])
        padded = torch.cat((flat, flat.new_full((1, *flat.shape[1:]), fill)))
        return padded[self.gather].view(self.samples, self.length, *flat.shape[1:])

    def to_tokens(self, y: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """[S, L, ...] -> [B, T, ...]; PAD tokens hold `fill`."""
        if self.identity:
            return y
        flat = y.reshape(-1, *y.shape[2:])
        padded = torch.cat((flat, flat.new_full((1, *flat.shape[1:]), fill)))
        return padded[self.scatter].view(*self.shape, *flat.shape[1:])

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sample values [S, ...] spread to the tokens [B, T, ...] of each sample (zeros at PAD tokens)."""
        padded = torch.cat((values, values.new_zeros((1, *values.shape[1:]))))
        return padded[self.segments.reshape(-1).where(self.segments.reshape(-1) >= 0, len(values))].view(
            *self.shape, *values.shape[1:]
        )


class ModalityContext:
    """Holds the modality map (ids [B, T], question flags [B, T] and the sample each token belongs to) of the
    current forward.

    `default` is the modality reported when no map was set: TEXT for an LLM used on its own, VISUAL or AUDIO for an
    encoder tower (every token of the vision tower is visual).
    """

    def __init__(self, default: Modality = Modality.TEXT) -> None:
        self.default = Modality(default)
        self.ids: torch.Tensor | None = None
        self.question: torch.Tensor | None = None
        self.layout: SampleLayout | None = None
        self.decoding = False

    def set(
        self, ids: torch.Tensor, question: torch.Tensor | None = None, segments: torch.Tensor | None = None
    ) -> None:
        """`segments` [B, T]: the index of the sample each token belongs to (-1 at PAD), for packed rows that hold
        several samples; by default one sample per row."""
        if ids.dim() != 2:
            raise ValueError(f"modality ids must be [batch, seq], got shape {tuple(ids.shape)}")
        for name, t in (("question mask", question), ("segments", segments)):
            if t is not None and t.shape != ids.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} != modality ids shape {tuple(ids.shape)}")
        self.ids = ids
        self.question = question if question is not None else torch.zeros_like(ids, dtype=torch.bool)
        self.layout = SampleLayout(segments if segments is not None else row_segments(ids))
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
        self.layout = None
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

    def layout_for(self, x: torch.Tensor) -> SampleLayout:
        """The samples of a layer input x [B, T, d] ([N, d]: one sample); one sample per row when no map was set."""
        if self.ids is None:
            shape = x.shape[:-1] if x.dim() > 2 else (1, x.shape[0])
            return SampleLayout(torch.arange(shape[0], device=x.device).unsqueeze(-1).expand(shape))
        self._checked(self.ids, x)
        if self.layout is None:
            raise RuntimeError("modality map set without a sample layout")
        return self.layout


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
