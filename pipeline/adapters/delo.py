"""DeLo (Liu et al.): dual-decomposed low-rank experts for continual missing-modality learning.

Pools. Per task t and modality m ∈ {text, visual, audio} (the paper has two; this model has three), a pool of E
rank-one factors (a_e, b_e): `pool_a{t}` [3, E, d_in] and `pool_b{t}` [d_out, 3, E], and a router `router{t}`
[3, E, d_in]. B is zero and A, router kaiming-uniform at init, as LoRA (so the router's gradient is zero until B moves).

Routing, per sample. q_m = mean of the layer input over the sample's tokens of modality m. A modality absent from
the sample takes the mean of the present modalities' queries (cross-modal guided routing; with one present modality
exactly its query, q̂_t := q_v in the paper). Logits ℓ_m = R_m q̂_m ∈ R^E; the r = `rank` largest are selected.
A sample is a row of a padded batch or a segment of a packed row: queries, gates, task keys and the alignment loss
are per sample either way, and each token takes its own sample's gates (and, at inference, its sample's task).

Update. Each token x of modality m gets
  h = W0 x + s · Σ_e g_{m,e} b_e (a_e · x),   s = alpha / rank,
i.e. ΔW_m = s · Σ_{selected i} b_i ⊗ a_i (PAD tokens get none). Since every token sees only its own modality's ΔW,
an absent modality's selection does not reach the output; its proxy query enters the task-key memory below.
Router training: the public code's hard top-k gives the router no gradient, so the gate is a straight-through
estimator, g = topk_mask + (p − sg(p)) with p = softmax(ℓ): its value is exactly the 0/1 mask (the paper's forward,
bit for bit) and its gradient is softmax's. Hence all E factors are computed (E rank-one products per modality,
cheap) so that ∂L/∂g_e exists for unselected factors too.

Alignment loss, on complete samples (visual and text tokens both present): L_align = mean_b (1 − cos(q_v, q_t)). Its
gradient reaches the adapters of earlier layers through the hidden states. Each layer keeps its last value
(`last_align`); `pipeline.adapters.aux_loss(model)` sums align_weight · L_align over the layers, and the training
loop adds it to the task loss before backward.

Tasks. Option `tasks` pre-allocates T task slots (parameter names are fixed, so files load with `load_adapter`).
`start_task(model, t)` (`pipeline.adapters`) makes task t the active one: its pools and router train, every other
task's are frozen (requires_grad False). The trainable set changes, so a loop calls it after `mark_trainable` (which
would unfreeze all adapter parameters) and builds a new optimizer / DeepSpeed engine per task. In training mode
every sample uses the active task, and in forwards with grad enabled the active task's key K_t [3, d_in] (buffer
`task_keys`) follows an EMA of the batch-mean proxy-filled queries (`key_momentum`; the first batch sets it). In
eval mode each sample takes, per layer, the task whose key is nearest (squared Euclidean over the three queries)
among the tasks that have a key, so no task id is needed at inference. Keys are per rank under data parallelism
(each an EMA of its own stream; rank 0's are saved) and non-reentrant gradient checkpointing updates them twice per
step.

Routing is per input: a KV-cache decoding step (`ModalityContext.decoding`) keeps the task and gates of the forward
it continues, rather than routing the new token from itself, so generation uses the prompt's pools throughout. Not
mergeable: ΔW depends on the input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adapters.base import AdapterLinear
from pipeline.adapters.config import AdapterConfig
from pipeline.modality import Modality, ModalityContext

MODALITIES = (Modality.TEXT, Modality.VISUAL, Modality.AUDIO)


def proxy_queries(x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample modality queries [S, 3, d] with absent modalities filled by the mean of the present ones, and
    the presence flags [S, 3]. x [B, T, d]; onehot [B, T, 3] when each row is one sample (PAD rows all zero), or
    [B, T, S, 3] (token t of row b is of sample s and modality m) for packed rows."""
    if onehot.dim() == 3:
        counts, q = onehot.sum(1), torch.einsum("btm,btd->bmd", onehot, x)
    else:
        counts, q = onehot.sum((0, 1)), torch.einsum("btsm,btd->smd", onehot, x)
    present = counts > 0
    q = q / counts.clamp(min=1).unsqueeze(-1)
    pres = present.to(x.dtype).unsqueeze(-1)
    proxy = (q * pres).sum(1, keepdim=True) / pres.sum(1, keepdim=True).clamp(min=1)
    return torch.where(present.unsqueeze(-1), q, proxy), present


def straight_through_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask of the k largest logits in value; softmax's gradient in backward."""
    hard = torch.zeros_like(logits).scatter_(-1, logits.topk(k, dim=-1).indices, 1.0)
    soft = logits.softmax(-1)
    return hard + (soft - soft.detach())


@dataclass
class DeLoOptions:
    pool_size: int = 8  # E: rank-one factors per (task, modality) pool; `rank` of them are selected per sample
    tasks: int = 1  # task slots pre-allocated; `start_task` activates one, freezing the others
    align_weight: float = 0.1  # weight of the visual-text query alignment loss (`pipeline.adapters.aux_loss`)
    key_momentum: float = 0.99  # EMA momentum of the task keys

    def validate(self) -> None:
        if self.tasks < 1:
            raise ValueError(f"adapter.options.tasks: must be >= 1, got {self.tasks}")


class DeLoLinear(AdapterLinear, name="delo"):
    """Task-partitioned, modality-specific pools of rank-one factors, routed per sample (see the module docstring)."""

    Options = DeLoOptions
    mergeable = False
    task_keys: torch.Tensor  # buffers: [tasks, 3, d_in] keys, [tasks] which have one, the active task
    key_seen: torch.Tensor
    active_task: torch.Tensor

    @classmethod
    def check_config(cls, cfg: AdapterConfig) -> None:
        pool_size = cfg.method_options().pool_size
        if pool_size < cfg.rank:
            raise ValueError(f"adapter.options.pool_size: must be >= rank ({cfg.rank}), got {pool_size}")

    @classmethod
    def for_tasks(cls, cfg: AdapterConfig, tasks: int) -> AdapterConfig:
        """One pool set per task unless `adapter.options.tasks` says how many (then at least `tasks`)."""
        if "tasks" not in cfg.options:
            return dataclasses.replace(cfg, options={**cfg.options, "tasks": tasks})
        if cfg.method_options().tasks < tasks:
            raise ValueError(
                f"adapter.options.tasks={cfg.options['tasks']} task slots for {tasks} continual tasks; "
                f"set adapter.options.tasks={tasks}"
            )
        return cfg

    def start_task(self, task: int) -> None:
        """Make `task` the active task: its pools and router train, all others freeze."""
        if not 0 <= task < self.tasks:
            raise ValueError(f"start_task: task {task} out of range (adapter.options.tasks = {self.tasks})")
        self.active_task.fill_(task)
        for t in range(self.tasks):
            for p in self.task_parameters(t):
                p.requires_grad_(t == task)

    def __init__(self, base: nn.Linear, cfg: AdapterConfig, ctx: ModalityContext, depth: tuple[int, int], name: str):
        super().__init__(base, cfg, ctx, depth, name)
        opts = cfg.method_options()
        self.rank = cfg.rank
        self.pool_size = opts.pool_size
        self.tasks = opts.tasks
        self.align_weight = float(opts.align_weight)
        self.key_momentum = float(opts.key_momentum)
        self.scaling = cfg.alpha / cfg.rank
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        n, e = len(MODALITIES), self.pool_size
        for t in range(self.tasks):  # plain attributes, not a ParameterList: ZeRO-3 gathers a module's own params
            a, router = self._new_param(n, e, self.in_features), self._new_param(n, e, self.in_features)
            for p in (a, router):
                nn.init.kaiming_uniform_(p.view(n * e, -1), a=math.sqrt(5))
            self.register_parameter(f"pool_a{t}", a)
            self.register_parameter(f"pool_b{t}", self._new_param(self.out_features, n, e))
            self.register_parameter(f"router{t}", router)
        dev = base.weight.device
        self.register_buffer("task_keys", torch.zeros(self.tasks, n, self.in_features, device=dev))
        self.register_buffer("key_seen", torch.zeros(self.tasks, dtype=torch.bool, device=dev))
        self.register_buffer("active_task", torch.zeros((), dtype=torch.long, device=dev))
        self.last_align: torch.Tensor | None = None
        self.last_task: torch.Tensor | None = None
        self.route: tuple[torch.Tensor, torch.Tensor] | None = None  # inference: (task [B], gate [B, 3, E])

    def task_parameters(self, t: int) -> list[nn.Parameter]:
        return [getattr(self, f"pool_a{t}"), getattr(self, f"pool_b{t}"), getattr(self, f"router{t}")]

    def task_parameters_of(self, kind: str) -> list[nn.Parameter]:
        return [getattr(self, f"{kind}{t}") for t in range(self.tasks)]

    def _stacked(self, kind: str) -> torch.Tensor:
        return torch.stack(list(self.task_parameters_of(kind)))

    @torch.no_grad()
    def _update_key(self, t: int, q: torch.Tensor) -> None:
        batch_key = q.detach().mean(0).to(self.task_keys.dtype)
        if self.key_seen[t]:
            self.task_keys[t].lerp_(batch_key, 1.0 - self.key_momentum)
        else:
            self.task_keys[t].copy_(batch_key)
            self.key_seen[t] = True

    def nearest_task(self, q: torch.Tensor) -> torch.Tensor:
        """Per-sample task [B] whose key is nearest to the queries q [B, 3, d] (the active task if none has a key)."""
        if not bool(self.key_seen.any()):
            return self.active_task.expand(q.shape[0])
        dist = (q.detach().unsqueeze(1) - self.task_keys.to(q.dtype)).pow(2).sum((-1, -2))
        return dist.masked_fill(~self.key_seen, float("inf")).argmin(1)

    def _route(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference routing: each sample's task (nearest key) and its gates; a decoding step keeps the last one."""
        if self.ctx.decoding and self.route is not None and self.route[0].shape[0] == q.shape[0]:
            return self.route
        task = self.nearest_task(q)
        gate = straight_through_topk(torch.einsum("smd,smed->sme", q, self._stacked("router")[task]), self.rank)
        self.route = (task, gate)
        return self.route

    def _alignment(self, q: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        complete = present[:, int(Modality.TEXT)] & present[:, int(Modality.VISUAL)]
        cos = F.cosine_similarity(q[:, int(Modality.VISUAL)], q[:, int(Modality.TEXT)], dim=-1)
        return ((1 - cos) * complete).sum() / complete.sum().clamp(min=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        xs = x if x.dim() == 3 else x.unsqueeze(0)  # encoder towers may pass [N, d]: one sample
        ids = self.ctx.ids_for(x).view(xs.shape[:2])
        layout = self.ctx.layout_for(xs)
        onehot = (ids.unsqueeze(-1) == torch.arange(len(MODALITIES), device=x.device)).to(x.dtype)
        if layout.identity:
            q, present = proxy_queries(xs, onehot)
        else:  # packed rows: the queries of each sample (segment)
            samples = (layout.segments.unsqueeze(-1) == torch.arange(layout.samples, device=x.device)).to(x.dtype)
            q, present = proxy_queries(xs, samples.unsqueeze(-1) * onehot.unsqueeze(-2))
        self.last_align = self._alignment(q, present)
        self.last_aux_loss = self.align_weight * self.last_align
        n, e = len(MODALITIES), self.pool_size
        a: torch.Tensor
        b: torch.Tensor
        x_in = self.dropout(xs)
        if self.training:
            t = int(self.active_task)
            if torch.is_grad_enabled():
                self._update_key(t, q)
            a, b, router = self.task_parameters(t)
            self.last_task = self.active_task.expand(q.shape[0])
            gate = straight_through_topk(torch.einsum("smd,med->sme", q, router), self.rank)
            u = F.linear(x_in, a.view(n * e, -1)) * layout.per_token(gate).flatten(-2)  # [B, T, 3E]
        else:  # each sample's own task: every task's factors, each token keeping its sample's task
            task, gate = self._route(q)
            self.last_task = task
            a, b = (
                self._stacked("pool_a"),
                torch.cat(list(self.task_parameters_of("pool_b")), dim=1),
            )  # [T,3,E,d], [o,T3,E]
            picked = F.one_hot(task, self.tasks).to(x.dtype).unsqueeze(-1).unsqueeze(-1) * gate.unsqueeze(1)
            u = F.linear(x_in, a.view(self.tasks * n * e, -1)) * layout.per_token(picked).flatten(-3)
        u = (u.unflatten(-1, (-1, n, e)) * onehot.unsqueeze(-1).unsqueeze(-3)).flatten(-3)
        delta = F.linear(u, b.reshape(self.out_features, -1))
        return out + self.scaling * delta.view(out.shape)
