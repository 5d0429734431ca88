"""The `adapter:` section of a run config.

Which layers get an adapter is decided by `targets` and `scope` (see `matches`), so that one config format serves the
LLM and, in later stages, the encoder towers of the composed model. The method-specific `options` are a plain
mapping in the file and the method's own typed `Options` dataclass in code (`method_options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from pipeline.adapters.base import ADAPTERS, DEFAULT_TARGETS, AdapterLinear
from pipeline.config import from_dict

__all__ = ["DEFAULT_TARGETS", "AdapterConfig"]


@dataclass
class AdapterConfig:
    """Adapter choice and hyper-parameters.

    targets: a bare name (`q_proj`) matches the last component of a module name; a pattern containing `.` or a
      wildcard (`vision.*.q_proj`) is matched with fnmatch against the full module name. Unset (null): the method's
      `default_targets`, restricted to the layers it can adapt (MoRA: the square attention projections).
    scope: module-name prefixes the targets are restricted to (e.g. `[llm]` in the composed model, so that the
      encoder towers' own `q_proj` stay untouched); empty means the whole model.
    options: the method's own options (its `Options` dataclass: see each method's module); unset ones take the
      defaults there.
    """

    name: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | None = None
    scope: list[str] = field(default_factory=list)
    rslora: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> type[AdapterLinear]:
        """The registered adapter class of `name`."""
        if self.name not in ADAPTERS:
            raise ValueError(f"adapter.name: unknown adapter '{self.name}' (registered: {', '.join(ADAPTERS)})")
        return ADAPTERS[self.name]

    def method_options(self) -> Any:
        """`options` as the method's typed `Options` (defaults filled in); ValueError naming a bad key."""
        return from_dict(self.method.Options, self.options, where="", prefix="adapter.options")

    def validate(self) -> None:
        method = self.method
        if self.rank < 1:
            raise ValueError(f"adapter.rank: must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout: must be in [0, 1), got {self.dropout}")
        if self.targets is not None and not self.targets:
            raise ValueError("adapter.targets: empty; name at least one linear layer (e.g. q_proj), or leave it unset")
        self.method_options()
        method.check_config(self)

    def for_tasks(self, tasks: int) -> AdapterConfig:
        """This adapter's config for a continual sequence of `tasks` tasks (see `AdapterLinear.for_tasks`)."""
        return self.method.for_tasks(self, tasks)

    @property
    def target_names(self) -> list[str]:
        """The targets in force: `targets`, or the method's defaults when unset."""
        return list(self.method.default_targets) if self.targets is None else list(self.targets)

    def matches(self, module_name: str) -> bool:
        """Whether a linear layer called `module_name` is a target (see the class docstring)."""
        if self.scope and not any(module_name == p or module_name.startswith(p + ".") for p in self.scope):
            return False
        leaf = module_name.rsplit(".", 1)[-1]
        for pattern in self.target_names:
            if any(ch in pattern for ch in ".*?["):
                if fnmatchcase(module_name, pattern):
                    return True
            elif leaf == pattern:
                return True
        return False
