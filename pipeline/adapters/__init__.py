"""Parameter-efficient adapters: the registry, `attach`, `merge`, `mark_trainable` and the per-run hooks.

`attach(model, cfg)` replaces each target `nn.Linear` (chosen by `cfg.targets` / `cfg.scope`, see AdapterConfig) by
the adapter class registered under `cfg.name`, freezes the wrapped base weights and makes the adapter's own
parameters trainable. It does not touch any other module: which other parts train (projectors, by stage) is the
caller's decision, expressed with `mark_trainable`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

# Each method registers itself in ADAPTERS when its module is imported; this import order is the registry's order.
# isort: off
from pipeline.adapters import lora, dora, bitfit, imod, unimodal, moka, loramoe, hydralora, mora, delo  # noqa: F401

# isort: on
from pipeline.adapters.base import ADAPTERS, AdapterLinear, adapter_layers, adapter_state
from pipeline.adapters.config import AdapterConfig
from pipeline.modality import ModalityContext

Contexts = ModalityContext | Mapping[str, ModalityContext] | None


@dataclass
class AttachReport:
    adapter: str
    layers: list[str]
    trainable_params: int

    def __str__(self) -> str:
        return f"{self.adapter}: {len(self.layers)} layers, {self.trainable_params:,} trainable parameters"


def _context_for(name: str, contexts: Mapping[str, ModalityContext]) -> ModalityContext:
    """The context of the longest prefix that `name` falls under."""
    best = max((p for p in contexts if p == "" or name == p or name.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise ValueError(f"attach: no modality context covers layer '{name}' (prefixes: {', '.join(contexts)})")
    return contexts[best]


def _depths(names: list[str]) -> dict[str, tuple[int, int]]:
    """(block index, number of blocks) per layer name, counted per stack: `model.layers.3.mlp.up_proj` is block 3
    of the stack `model.layers`; a name without a numeric component is block 0 of 1."""
    located = {}
    for name in names:
        match = re.search(r"(^|\.)(\d+)(\.|$)", name)
        located[name] = (name[: match.start(2)], int(match.group(2))) if match else (name, 0)
    sizes: dict[str, int] = {}
    for stack, index in located.values():
        sizes[stack] = max(sizes.get(stack, 0), index + 1)
    return {name: (index, sizes[stack]) for name, (stack, index) in located.items()}


def _resolve_contexts(model: nn.Module, contexts: Contexts) -> Mapping[str, ModalityContext]:
    if contexts is None:
        contexts = getattr(model, "modality_contexts", None) or ModalityContext()
    return {"": contexts} if isinstance(contexts, ModalityContext) else contexts


def attach(model: nn.Module, cfg: AdapterConfig, contexts: Contexts = None) -> AttachReport:
    """Wrap the target linear layers of `model` in place with adapter `cfg.name`.

    contexts: one ModalityContext for all layers, or a mapping from module-name prefix ("llm", "vision", ...) to
    the context of that part; by default `model.modality_contexts` if the model has it, else a text context.
    """
    cfg.validate()
    if adapter_layers(model):
        raise ValueError("attach: the model already has adapters; merge them or start from the base model")
    contexts = _resolve_contexts(model, contexts)
    method = cfg.method
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and cfg.matches(n) and (cfg.targets is not None or method.can_adapt(m))
    ]
    if not names:
        raise ValueError(f"adapter.targets: no linear layer matches {cfg.target_names} (scope {cfg.scope or 'all'})")
    depths = _depths(names)
    make_layer = cfg.method.layer_factory(cfg)
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, leaf)
        base.requires_grad_(False)
        layer = make_layer(base, cfg, _context_for(name, contexts), depths[name], name)
        setattr(parent, leaf, layer)
    cfg.method.check_attached(adapter_layers(model))
    trainable = sum(p.numel() for p in adapter_parameters(model).values())
    return AttachReport(cfg.name, names, trainable)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapters' own parameters by full name (trainable after `attach`), without the wrapped base layers."""
    return {
        f"{name}.{key}": p
        for name, layer in adapter_layers(model).items()
        for key, p in layer.named_parameters()
        if not key.startswith("base_layer.")
    }


def mark_trainable(model: nn.Module, patterns: Iterable[str] = ()) -> int:
    """Make exactly the adapter parameters and the parameters whose full name matches one of the fnmatch
    `patterns` (e.g. "projectors.*") trainable; freeze everything else. Returns the trainable parameter count."""
    patterns = list(patterns)
    adapter = set(adapter_parameters(model))
    count = 0
    for name, p in model.named_parameters():
        train = name in adapter or any(fnmatchcase(name, pat) for pat in patterns)
        p.requires_grad_(train)
        count += p.numel() if train else 0
    return count


def aux_loss(model: nn.Module) -> torch.Tensor | float:
    """Sum of the adapters' auxiliary losses from their last forward (0.0 when none): add it to the task loss
    before backward (the training loop does), never to the loss it reports."""
    losses = [m.last_aux_loss for m in adapter_layers(model).values() if m.last_aux_loss is not None]
    return torch.stack(losses).sum() if losses else 0.0


def merge(model: nn.Module) -> list[str]:
    """Fold every adapter into its layer in place, leaving plain `nn.Linear` modules; returns the merged names."""
    layers = adapter_layers(model)
    blocked = [n for n, m in layers.items() if not m.mergeable]
    if blocked:
        raise ValueError(f"merge: adapters of type {type(layers[blocked[0]]).__name__} are not mergeable: {blocked}")
    for name, layer in layers.items():
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, layer.merged_linear())
    return list(layers)


def start_task(model: nn.Module, task: int) -> None:
    """Make `task` the trained task of every adapter layer (methods without task slots ignore it). Call after
    `mark_trainable` and before building the optimizer / DeepSpeed engine of that task."""
    for layer in adapter_layers(model).values():
        layer.start_task(task)


def prepare_merge(model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Run each adapter method's preparation for a streamed merge of `model` (see `AdapterLinear.prepare_merge`)."""
    for method in dict.fromkeys(type(layer) for layer in adapter_layers(model).values()):
        method.prepare_merge(model, state, dtype)


__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLinear",
    "AttachReport",
    "adapter_layers",
    "adapter_parameters",
    "adapter_state",
    "attach",
    "aux_loss",
    "mark_trainable",
    "merge",
    "prepare_merge",
    "start_task",
]
