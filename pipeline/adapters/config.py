"""The `adapter:` section of a run config.

Which layers get an adapter is decided by `targets` and `scope` (see `matches`), so that one config format serves the
LLM and, in later stages, the encoder towers of the composed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Method-specific options and their defaults; a key not listed here is a config error.
IMOD_OPTIONS = {
    "shared_ratio0": 0.2,  # r_s(0): share of A's elements in the shared block at the first layer
    "depth_alpha": 0.4,  # r_s(l) = r_s(0) + depth_alpha * l / L
    "text_share": 0.5,  # fraction of the non-shared elements that are text-exclusive (the rest: non-text)
    "lambda1": 1.0,  # weight of the MSDC gradient (L_TS + L_OS)
    "lambda2": 1e-4,  # weight of the MAAC gradient (L_MA)
    "mask_seed": 0,  # seed of the element-wise partition masks
}
ROUTED_OPTIONS = {
    "unimodal_lora": {},
    "moka": {"cross_weight": 1.0},  # w in a_m' = a_m + w · softmax(a_m qᵀ/√r) q
    "loramoe": {"experts": 4, "balance_coef": 0.0},  # balance_coef · CV²(router load): see pipeline.adapters.aux_loss
    "hydralora": {"heads": 4},  # number of B heads
}
DELO_OPTIONS = {
    "pool_size": 8,  # E: rank-one factors per (task, modality) pool; `rank` of them are selected per sample
    "tasks": 1,  # task slots pre-allocated; `pipeline.adapters.delo.start_task` activates one, freezing the others
    "align_weight": 0.1,  # weight of the visual-text query alignment loss (`pipeline.adapters.aux_loss`)
    "key_momentum": 0.99,  # EMA momentum of the task keys
}
OPTIONS = {"lora": {}, "dora": {}, "bitfit": {}, "imod": IMOD_OPTIONS, **ROUTED_OPTIONS, "mora": {},
           "delo": DELO_OPTIONS}


@dataclass
class AdapterConfig:
    """Adapter choice and hyper-parameters.

    targets: a bare name (`q_proj`) matches the last component of a module name; a pattern containing `.` or a
      wildcard (`vision.*.q_proj`) is matched with fnmatch against the full module name.
    scope: module-name prefixes the targets are restricted to (e.g. `[llm]` in the composed model, so that the
      encoder towers' own `q_proj` stay untouched); empty means the whole model.
    options: method-specific options (for `imod`: shared_ratio0, depth_alpha, text_share, lambda1, lambda2,
      mask_seed); unset ones take the defaults in `OPTIONS`.
    """

    name: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    scope: list[str] = field(default_factory=list)
    rslora: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from pipeline.adapters import ADAPTERS  # the registry imports this module

        if self.name not in ADAPTERS:
            raise ValueError(f"adapter.name: unknown adapter '{self.name}' (registered: {', '.join(ADAPTERS)})")
        if self.rank < 1:
            raise ValueError(f"adapter.rank: must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter.dropout: must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("adapter.targets: empty; name at least one linear layer (e.g. q_proj)")
        known = OPTIONS[self.name]
        for key in self.options:
            if key not in known:
                listed = ", ".join(known) or "none"
                raise ValueError(f"adapter.options.{key}: not an option of '{self.name}' (known: {listed})")
        opts = self.resolved_options()
        if self.name == "imod":
            for key in ("shared_ratio0", "text_share"):
                if not 0.0 <= opts[key] <= 1.0:
                    raise ValueError(f"adapter.options.{key}: must be in [0, 1], got {opts[key]}")
            if opts["lambda1"] < 0 or opts["lambda2"] < 0:
                raise ValueError("adapter.options.lambda1/lambda2: must be >= 0")
        for key in ("experts", "heads"):
            if key in opts and (int(opts[key]) != opts[key] or opts[key] < 1):
                raise ValueError(f"adapter.options.{key}: must be an integer >= 1, got {opts[key]}")
        if opts.get("balance_coef", 0) < 0:
            raise ValueError(f"adapter.options.balance_coef: must be >= 0, got {opts['balance_coef']}")
        if self.name == "mora" and len(self.scope) < 2:
            raise ValueError(f"adapter.scope: mora needs at least two towers (e.g. [vision, audio, llm]), "
                             f"got {self.scope}")

    def resolved_options(self) -> dict:
        return {**OPTIONS.get(self.name, {}), **self.options}

    def matches(self, module_name: str) -> bool:
        """Whether a linear layer called `module_name` is a target (see the class docstring)."""
        if self.scope and not any(module_name == p or module_name.startswith(p + ".") for p in self.scope):
            return False
        leaf = module_name.rsplit(".", 1)[-1]
        for pattern in self.targets:
            if any(ch in pattern for ch in ".*?["):
                if fnmatchcase(module_name, pattern):
                    return True
            elif leaf == pattern:
                return True
        return False
