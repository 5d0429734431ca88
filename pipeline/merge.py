"""Fold a run's adapter into a standalone checkpoint: what `launch/merge.py` runs.

Memory. The LLM is never materialised. The AVLLM is composed around a meta-device LLM skeleton (the towers and
projectors are small and load for real); the LLM's weights then stream from the base checkpoint one tensor at a time.
Each adapted layer is rebuilt on the CPU from its base weight and its trained tensors and folded by the adapter's own
`merged_linear` (so every mergeable adapter, present or future, merges by the code that trained it), and the result
goes into size-bounded shards. Peak memory: one output shard + one layer + towers and projectors. A method whose
layers share run-level state (MoRA couples towers through their Gram matrices) sets it from the export up front
(`pipeline.adapters.prepare_merge`), so the fold stays one layer at a time.

Exactness. The fold runs in fp32 on the weights the trained model saw (the base cast to the run's dtype), then the
result is cast to the output dtype. The media-token rows of the embedding (and an untied head) are grown exactly as
`AVLLM` grows them. A merged adapter that adds biases (BitFit on a bias-free Llama) switches on the config's bias flags
(`attention_bias`, `mlp_bias`; the other biases they add are zero) so that stock transformers loads them; a family
without such a flag is refused.

Output: `AVLLM.save_pretrained`'s layout plus `merge.json` (source run, adapter name and config, base paths, dtype,
sha256 of every other file). `--keep-adapters` writes the base weights unmerged plus `adapter/` (the adapter in
`pipeline.adapters.io`'s format), which `pipeline.adapters.io.load_model` attaches. Everything is written into
`.OUT.partial` beside OUT and renamed at the end; a left-over `.OUT.partial` (a killed merge) is removed by the next
merge.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig, PreTrainedModel

from pipeline.adapters import AdapterLinear, adapter_layers, merge, prepare_merge
from pipeline.adapters.config import AdapterConfig
from pipeline.adapters.io import write_adapter
from pipeline.config import from_dict, to_dict
from pipeline.model.avllm import AVLLM, KEPT_ADAPTER_DIR, empty_llm, vocab_size
from pipeline.model.config import CHECKPOINT_KEYS, DTYPES, ModelConfig
from pipeline.model.shards import ShardReader, ShardWriter, file_sha256
from pipeline.rundir import MERGE_MANIFEST, TRAINABLES, RunDir, export_has, load_trainables, read_export
from pipeline.storage import write_failed

FORMAT = "avtrain-merge/1"
BIAS_FLAGS = ("attention_bias", "mlp_bias")


class MergeError(ValueError):
    """A problem with the merge's input, said in one line before any expensive work."""


@dataclasses.dataclass
class Source:
    run_dir: Path
    export: Path  # final/ or checkpoints/step-N/export/
    model: ModelConfig
    stage1_run: Path | None  # where the projectors come from when the export has none
    adapter: AdapterConfig | None
    layers: list[str]
    missing: dict | None  # the run's missing-modality section (its train condition)


@dataclasses.dataclass
class _RunSections:
    """The sections of a run's config.yaml the merge needs. The rest (data shards, ...) may be gone by now."""

    model: ModelConfig
    stage1_run: Path | None = None


def read_source(run_dir: str | Path, checkpoint: str | None = None) -> Source:
    """The run's base model config, adapter and export, or a one-line MergeError naming what is wrong."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise MergeError(f"{run}: not a run directory (no config.yaml)")
    try:
        export = run.export(checkpoint)
        adapter, layers = read_export(export)
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    data = yaml.safe_load(run.config.read_text()) or {}
    sections = from_dict(
        _RunSections, {"model": data.get("model") or {}, "stage1_run": data.get("stage1_run")}, where=str(run.config)
    )
    return Source(run.root, export, sections.model, sections.stage1_run, adapter, layers, data.get("missing"))


def check_mergeable(source: Source, keep_adapters: bool) -> None:
    if source.adapter is None or keep_adapters:
        return
    cls = source.adapter.method
    if not cls.mergeable:
        raise MergeError(
            f"adapter '{source.adapter.name}' ({cls.__name__}) cannot be merged: its output depends on "
            "each token (routing or modality), which no fixed weight reproduces; use --keep-adapters "
            "to write a checkpoint that carries the adapter modules"
        )


# ---- the LLM, streamed ----------------------------------------------------------------------------------------


def _target_llm(config, vocab: int, bias_modules: set[str]) -> PreTrainedModel:
    """Meta-device LLM of the output: the base architecture with the grown vocabulary, and with the bias flags
    switched on that the merged biases of `bias_modules` need."""

    def build(cfg) -> PreTrainedModel:
        model = empty_llm(cfg)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        return model

    def missing(model: PreTrainedModel) -> set[str]:
        keys = model.state_dict().keys()
        return {m for m in bias_modules if f"{m}.bias" not in keys}

    target = build(config)
    for flag in BIAS_FLAGS:
        if missing(target) and getattr(config, flag, None) is False:
            trial = copy.deepcopy(config)
            setattr(trial, flag, True)
            candidate = build(trial)
            if len(missing(candidate)) < len(missing(target)):
                config, target = trial, candidate
    if missing(target):
        raise MergeError(
            f"the merged adapter adds biases to {sorted(missing(target))[:2]}, which a "
            f"'{config.model_type}' checkpoint cannot hold; use --keep-adapters"
        )
    return target


def _output_keys(model: PreTrainedModel) -> list[str]:
    """State-dict keys to write: tied aliases (a tied head) are left out, as transformers does."""
    unique = dict(model.named_parameters())
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique.keys()
    return [k for k in model.state_dict() if k not in aliases]


@torch.no_grad()
def _fold(
    layer: AdapterLinear, name: str, base: ShardReader, trained: dict[str, torch.Tensor], run_dtype: torch.dtype
) -> torch.nn.Linear:
    """Materialise one meta adapter layer (LLM module `name`) on the CPU in fp32 and fold it."""
    state = {}
    for key in layer.state_dict():
        if key.startswith("base_layer."):
            state[key] = base.read(f"{name}.{key.removeprefix('base_layer.')}").to(run_dtype)
        elif f"llm.{name}.{key}" in trained:
            state[key] = trained[f"llm.{name}.{key}"]
        else:
            raise MergeError(f"the run's export has no tensor 'llm.{name}.{key}'")
    layer.to_empty(device="cpu")
    layer.load_state_dict(state)
    merged = layer.merged_linear()
    layer.to("meta")
    return merged


def _grow_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """New vocabulary rows = mean of the old rows, as `AVLLM._add_token_rows` sets them."""
    if tensor.shape[0] >= rows:
        return tensor[:rows]
    return torch.cat([tensor, tensor.mean(0, keepdim=True).expand(rows - tensor.shape[0], -1)])


def write_llm(
    model: AVLLM,
    cfg: ModelConfig,
    out: Path,
    dtype: torch.dtype,
    trained: dict[str, torch.Tensor],
    merging: bool,
    shard_bytes: int,
) -> None:
    """Stream the base LLM into `out` (config, generation config, shards), folding the adapters when merging."""
    llm_dir = cfg.llm_dir
    base = ShardReader(llm_dir)
    run_dtype = cfg.torch_dtype
    layers = adapter_layers(model.llm) if merging else {}
    vocab = vocab_size(model.llm)
    biased = {n for n, layer in layers.items() if layer.merged_bias() is not None}
    base_config = AutoConfig.from_pretrained(llm_dir)
    target = _target_llm(base_config, vocab, biased)
    embeddings = {
        f"{n}.weight"
        for n, m in target.named_modules()
        if m is target.get_input_embeddings() or m is target.get_output_embeddings()
    }
    keys = _output_keys(target)
    flags_on = any(getattr(target.config, f, None) != getattr(base_config, f, None) for f in BIAS_FLAGS)
    for key in keys:
        module = key.rpartition(".")[0]
        if not (module in layers or key in base or (flags_on and key.endswith(".bias"))):
            raise MergeError(f"{llm_dir}: no tensor '{key}' (its key layout differs from the model's parameter names)")
    writer = ShardWriter(out, shard_bytes)
    folded: tuple[str, torch.nn.Linear] | None = None
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if module in layers:
            if folded is None or folded[0] != module:
                folded = (module, _fold(layers[module], module, base, trained, run_dtype))
            tensor = getattr(folded[1], leaf)
            if tensor is None:  # a bias the flags added to a layer whose merge has none
                tensor = torch.zeros(target.get_parameter(key).shape)
        elif key in embeddings:
            tensor = _grow_rows(base.read(key).to(run_dtype), target.get_parameter(key).shape[0])
        elif key in base:
            tensor = base.read(key).to(run_dtype)
        else:
            tensor = torch.zeros(target.state_dict()[key].shape)
        writer.add(key, tensor.detach().to(dtype))
    writer.close()
    target.config.dtype = dtype
    target.config.save_pretrained(out)
    if (llm_dir / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(llm_dir).save_pretrained(out)


# ---- the whole checkpoint -------------------------------------------------------------------------------------


def _load_small_parts(model: AVLLM, source: Source, merging: bool) -> dict[str, torch.Tensor]:
    """Load projectors (and, when merging, the adapter: real tensors in the towers, no-ops in the meta LLM) into
    `model`; returns the export's tensors for the streamed LLM layers."""
    trained = load_file(str(source.export / TRAINABLES))
    if not export_has(source.export, "projectors."):
        if source.stage1_run is None:
            raise MergeError(f"{source.export}: holds no projector weights and the run names no stage1_run")
        load_trainables(model, RunDir(source.stage1_run).final, prefixes=("projectors.",))
    if merging:
        load_trainables(model, source.export)
    elif export_has(source.export, "projectors."):
        load_trainables(model, source.export, prefixes=("projectors.",))
    return trained


def write_checkpoint(source: Source, out: Path, dtype_name: str, keep_adapters: bool, shard_bytes: int) -> None:
    dtype = DTYPES[dtype_name]
    merging = source.adapter is not None and not keep_adapters
    compute = dataclasses.replace(source.model, dtype="fp32")
    model = AVLLM(compute, llm=empty_llm(AutoConfig.from_pretrained(source.model.llm_dir)))
    trained = _load_small_parts(model, source, merging)
    if merging:
        prepare_merge(model, trained, torch.float32)
    write_llm(model, source.model, out / "llm", dtype, trained, merging, shard_bytes)
    if merging:  # the towers' adapters (the LLM's were folded while streaming; its skeleton stays on meta)
        for name, part in model.named_children():
            if name != "llm":
                merge(part)
    model.to(dtype)
    model.config = dataclasses.replace(source.model, dtype=dtype_name)
    model.save_pretrained(out, llm_weights=False, max_shard_size=f"{max(shard_bytes // 2**20, 1)}MB")
    if source.adapter is not None and keep_adapters:
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v)
            for k, v in trained.items()
            if any(k.startswith(layer + ".") for layer in source.layers)
        }
        write_adapter(out / KEPT_ADAPTER_DIR, source.adapter, source.layers, state)


def _recorded(ref: str | None) -> str | None:
    """A base checkpoint as merge.json records it: a pinned Hub id as it is, a local directory made absolute."""
    return str(Path(ref).resolve()) if ref is not None and Path(ref).exists() else ref


def write_manifest(source: Source, out: Path, dtype_name: str, merged: bool) -> None:
    files = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "source_run": str(source.run_dir.resolve()),
        "export": str(source.export.resolve()),
        "adapter": None
        if source.adapter is None
        else {"name": source.adapter.name, "config": to_dict(source.adapter), "layers": len(source.layers)},
        "merged": merged,
        # each base checkpoint: a Hub id pinned to its snapshot (org/name@<commit>), or a local directory
        "base": {k: _recorded(getattr(source.model, k)) for k in CHECKPOINT_KEYS},
        "dtype": dtype_name,
        # the run's missing-modality training (its train condition, which eval --missing-grid names)
        "missing": source.missing,
        "files": files,
    }
    (out / MERGE_MANIFEST).write_text(json.dumps(manifest, indent=2))


def protected_dirs(source: Source) -> dict[str, Path]:
    """What the merge reads and must never replace: the run and every base model directory it names."""
    found = {"--run": source.run_dir, "stage1_run": source.stage1_run}
    found |= {f"model.{k}": getattr(source.model, k) for k in ("llm", "vision", "audio", "tokenizer")}
    return {key: Path(path).resolve() for key, path in found.items() if path is not None}


def check_out(source: Source, out: Path, force: bool) -> None:
    """Refuse an `out` that is or contains the run or a base model directory, or that lies inside one and exists or
    would be replaced (`force`); one line, before anything is written. A new directory inside the run (a continual
    sequence ships each task's run there) touches nothing the run holds."""
    target = out.resolve()
    for key, path in protected_dirs(source).items():
        inside = target.is_relative_to(path) and target != path
        if target == path or path.is_relative_to(target) or (inside and (force or out.exists())):
            relation = "is" if target == path else "lies inside" if target.is_relative_to(path) else "contains"
            raise MergeError(f"--out {out} {relation} {key} ({path}); write the merge somewhere else")


def check_replace(out: Path, force: bool) -> None:
    """Refuse to replace an existing `out` without --force, and with it anything but an earlier merge's output."""
    if not out.exists():
        return
    if not force:
        raise MergeError(f"{out}: already exists; pass --force to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MERGE_MANIFEST).is_file()):
        raise MergeError(
            f"{out}: --force replaces only an earlier merge's output (with {MERGE_MANIFEST}), and this "
            "is not one; pick another --out"
        )


def clear_stale(out: Path, tmp: Path) -> None:
    """Remove what a killed merge left beside `out` (its partial output; a replaced output it had moved aside is
    put back when `out` is gone), and say so on stderr."""
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists():
        old.rename(out)
        print(f"note: restored {out} from {old}, left by an interrupted merge", file=sys.stderr)
    elif old.exists():
        shutil.rmtree(old)
        print(f"note: removed {old}, left by an interrupted merge", file=sys.stderr)
    if tmp.exists():
        shutil.rmtree(tmp)
        print(f"note: removed {tmp}, left by an interrupted merge", file=sys.stderr)


def merge_run(
    run_dir: str | Path,
    out: str | Path,
    dtype: str | None = None,
    force: bool = False,
    keep_adapters: bool = False,
    checkpoint: str | None = None,
    shard_bytes: int = 2 * 2**30,
) -> Path:
    """Write the merged (or, with `keep_adapters`, adapter-carrying) checkpoint of a run to `out`, atomically."""
    out = Path(out)
    source = read_source(run_dir, checkpoint)
    check_mergeable(source, keep_adapters)
    dtype = dtype or source.model.dtype
    if dtype not in DTYPES:
        raise MergeError(f"--dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    check_out(source, out, force)
    tmp = out.with_name(f".{out.name}.partial")
    clear_stale(out, tmp)  # first: an output it restores counts as existing below
    check_replace(out, force)
    tmp.mkdir(parents=True)
    try:
        write_checkpoint(source, tmp, dtype, keep_adapters, shard_bytes)
        write_manifest(source, tmp, dtype, merged=source.adapter is not None and not keep_adapters)
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        failure = write_failed(tmp, exc, _base_bytes(source)) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            raise
        raise failure from exc
    return out


def _base_bytes(source: Source) -> int:
    """About what the output takes: the base model's files."""
    dirs = [Path(p) for p in (source.model.llm, source.model.vision, source.model.audio) if p]
    return sum(f.stat().st_size for d in dirs if d.is_dir() for f in d.rglob("*") if f.is_file())
