"""The adapter contract: the wrapped-linear base class, the registry it fills, and the hooks generic code calls.

A method is one module with one `AdapterLinear` subclass, registered by naming it in the class statement
(`class LoRALinear(LowRankLinear, name="lora")`). The class declares what generic code needs to know, so that
attach, merge, the training loop, continual sequences, the dominance rate and PEFT export ask the class and never
compare a method's name:

    Options         a dataclass of its own options (`adapter.options`), with defaults and a `validate()`
    mergeable       whether one fixed weight reproduces it (`merge`, `launch/merge.py`)
    lora_family     its only use of A is u = A x̃ through `project_down` (the Non-Text Dominance Rate is defined)
    peft_options    PEFT `LoraConfig` options of the equivalent PEFT layer, or None when PEFT has none
    default_targets the targets when `adapter.targets` is not set; then only layers it `can_adapt` are taken
    can_adapt       whether it can wrap a given linear layer (MoRA: square ones only)
    check_config    checks across the adapter section (MoRA needs two towers)
    check_attached  checks across the layers one attach made (MoRA: every tower in scope has paired targets)
    for_tasks       its config for a continual sequence of n tasks (DeLo allocates a pool set per task)
    start_task      per layer: make task t the trained one (DeLo freezes the other tasks' pools)
    prepare_merge   run-level state a streamed, layer-at-a-time merge must set first (MoRA's shared S)

An adapter keeps the original layer as `base_layer` (frozen) rather than copying its weight, so ZeRO-3 partitioning,
dtype and device of the base weight are untouched, and `merge` can hand back a plain `nn.Linear`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from pipeline.modality import ModalityContext

if TYPE_CHECKING:
    from pipeline.adapters.config import AdapterConfig

ADAPTERS: dict[str, type[AdapterLinear]] = {}
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class NoOptions:
    """The options of a method that has none."""


class AdapterLinear(nn.Module):
    """Base of every adapter: wraps `base_layer` and knows how to fold itself back into one `nn.Linear`.

    `depth` is (index of the block this layer sits in, number of blocks in its stack); methods whose behaviour
    depends on depth (IMoD's shared ratio) read it, the others ignore it.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    mergeable: ClassVar[bool] = True
    lora_family: ClassVar[bool] = False
    peft_options: ClassVar[dict[str, Any] | None] = None
    default_targets: ClassVar[tuple[str, ...]] = DEFAULT_TARGETS
    # an auxiliary loss from the last forward (e.g. LoRAMoE's load balance), summed by `aux_loss(model)`
    last_aux_loss: torch.Tensor | None = None

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in ADAPTERS:
                raise TypeError(
                    f"adapter name '{name}' is registered twice ({ADAPTERS[name].__name__}, {cls.__name__})"
                )
            cls.name = name
            ADAPTERS[name] = cls

    def __init__(
        self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.ctx = ctx
        self.depth = depth
        self.layer_name = name
        self.in_features = base.in_features
        self.out_features = base.out_features

    # ---- what generic code asks the class ---------------------------------------------------------------------

    @classmethod
    def layer_factory(cls, cfg: AdapterConfig) -> Callable[..., AdapterLinear]:
        """What `attach` calls once per target layer (with this class's constructor arguments). Called once per
        attach, so a method whose layers share run-level state (MoRA's cross-tower registry) creates it here."""
        return cls

    @classmethod
    def can_adapt(cls, layer: nn.Linear) -> bool:
        """Whether this method can wrap `layer`. With default targets, layers it cannot are left out; a layer named
        by explicit `adapter.targets` that it cannot adapt is an error (raised by the constructor)."""
        return True

    @classmethod
    def check_config(cls, cfg: AdapterConfig) -> None:
        """Raise ValueError naming the key when the adapter section cannot work for this method."""

    @classmethod
    def check_attached(cls, layers: Mapping[str, AdapterLinear]) -> None:
        """Raise ValueError naming the key when the layers one `attach` made cannot work together. Default: none."""

    @classmethod
    def for_tasks(cls, cfg: AdapterConfig, tasks: int) -> AdapterConfig:
        """The config of a continual sequence of `tasks` tasks (ValueError if it cannot hold them). Default: the same
        adapter trained on one task after another (sequential fine-tuning)."""
        return cfg

    @classmethod
    def prepare_merge(cls, model: nn.Module, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
        """Set the run-level state a streamed merge needs before it folds `model`'s layers one at a time, from the
        run's exported tensors `state` (by full name). Default: none."""

    def start_task(self, task: int) -> None:
        """Make `task` the one that trains (called after `mark_trainable`, before the optimizer is built)."""

    # ---- merging ----------------------------------------------------------------------------------------------

    def _new_param(self, *shape: int) -> nn.Parameter:
        w = self.base_layer.weight
        return nn.Parameter(torch.zeros(*shape, device=w.device, dtype=w.dtype))

    def delta_weight(self) -> torch.Tensor:
        """Change of the weight matrix that merging applies (same shape as the base weight)."""
        raise NotImplementedError(f"{type(self).__name__} is not mergeable")

    def merged_weight(self) -> torch.Tensor:
        return self.base_layer.weight + self.delta_weight()

    def merged_bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain `nn.Linear` computing what this adapter computes (in eval mode)."""
        bias = self.merged_bias()
        w = self.base_layer.weight
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(self.merged_weight())
        if bias is not None:
            out.bias.copy_(bias)
        out.requires_grad_(w.requires_grad)
        return out

    def peft_tensors(self) -> dict[str, torch.Tensor]:
        """This layer's tensors under PEFT's names (relative to the layer); defined where `peft_options` is set."""
        raise NotImplementedError(f"{type(self).__name__} has no PEFT equivalent")


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    """All adapter layers of `model`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's own tensors (parameters and persistent buffers), excluding the wrapped base layers.

    The tensors share storage with the model, so copying into them loads a state.
    """
    state = {}
    for name, layer in adapter_layers(model).items():
        for key, tensor in layer.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = tensor
    return state
