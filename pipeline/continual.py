"""Continual task sequences (`continual.tasks`): train the tasks one after another, and after each evaluate every
task seen so far, giving the accuracy matrix, average accuracy and average forgetting.

Every task is a stage-2 run of the same recipe on its own shards. The first starts from the stage-1 projectors and a
fresh adapter; task i > 0 starts from task i-1's final trainables (adapter and projectors): sequential fine-tuning
for single-adapter methods, and for methods with task slots (DeLo) task i's own share trained while the earlier
tasks' stay frozen (`pipeline.adapters.start_task`; the method's `for_tasks` sizes its slots, DeLo's
`adapter.options.tasks` defaulting to the number of tasks). After task i,
its run is shipped as `merge_run` ships any run (merged, or with the adapter kept when the method is not mergeable)
and each task j <= i is evaluated on its eval set, without telling the model which task it is.

Definitions (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018). a[i][j] is task j's headline metric (e.g. MUSIC-AVQA
overall accuracy, see each benchmark's `headline`) after training task i, for j <= i; T tasks.
    average accuracy    A = (1/T) sum_j a[T-1][j]
    average forgetting  F = 1/(T-1) sum_{j < T-1} ( max_{j <= l < T-1} a[l][j] - a[T-1][j] )   (0 for one task)
Forgetting is each earlier task's best result before the last task minus its final one.

Layout of output_dir:
    config.yaml                    the whole configuration
    task{i}-{name}/                task i's run directory, with shipped/ (its merged or adapter-carrying checkpoint)
    eval/after{i}/{name}/          launch/eval.py's outputs for task `name` after training task i
    continual.json, continual.md   the matrix, A and F (also A and F after every task)
Re-running the same command resumes: a finished task is not retrained, a written evaluation is not redone, and an
interrupted task resumes from its newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.adapters.io import load_model
from pipeline.config import save_config
from pipeline.data.plan import resolve_all
from pipeline.eval import BENCHMARKS
from pipeline.eval.bench import check_media
from pipeline.eval.generate import generate
from pipeline.eval.report import prediction_lines, score_conditions, write
from pipeline.merge import merge_run
from pipeline.model.avllm import AVLLM
from pipeline.rundir import RunDir
from pipeline.train.config import ContinualConfig, RunConfig, TaskConfig
from pipeline.train.loop import init_distributed, pick_device, train
from pipeline.train.output_dir import check_output_dir
from pipeline.train.stages import check_model

RESULT_JSON, RESULT_MD = "continual.json", "continual.md"
ACCURACY_BENCHMARKS = tuple(name for name in sorted(BENCHMARKS) if name != "mme")


def task_config(cfg: RunConfig, index: int) -> RunConfig:
    """Task `index`'s run: the recipe with the task's shards, in its own directory, without the sequence, and the
    adapter sized for the sequence (`AdapterConfig.for_tasks`)."""
    task, adapter = cfg.continual.tasks[index], cfg.adapter.for_tasks(len(cfg.continual.tasks))
    return dataclasses.replace(
        cfg,
        output_dir=str(Path(cfg.output_dir) / f"task{index}-{task.name}"),
        data=dataclasses.replace(cfg.data, sources=task.sources),
        adapter=adapter,
        continual=ContinualConfig(),
    )


def check_tasks(cfg: RunConfig) -> None:
    """Every task's shards and eval set exist and read (raises ValueError naming the file), before any training."""
    check_model(task_config(cfg, 0))  # the adapter as sized for the sequence, on the model's skeleton
    for i, task in enumerate(cfg.continual.tasks):
        resolve_all(dataclasses.replace(cfg.data, sources=task.sources))
        if not RunDir(task_config(cfg, i).output_dir).finished():  # a finished task is kept, an unfinished one
            check_output_dir(task_config(cfg, i))  # resumes or starts over as a plain run would
        if task.eval.bench not in ACCURACY_BENCHMARKS:
            raise ValueError(
                f"continual task '{task.name}': eval.bench '{task.eval.bench}' is not one of "
                f"{', '.join(ACCURACY_BENCHMARKS)} (the matrix averages accuracies; MME scores points)"
            )
        items = load_items(task)
        if not items:
            raise ValueError(f"continual task '{task.name}': {task.eval.data} holds no {task.eval.bench} questions")
        check_media(items, task.eval.bench)


def load_items(task: TaskConfig) -> list:
    media = Path(task.eval.media_root) if task.eval.media_root else None
    return BENCHMARKS[task.eval.bench].load(Path(task.eval.data), media)


def evaluate(model: AVLLM, task: TaskConfig, cfg: ContinualConfig, out: Path, rank: int, world: int) -> float | None:
    """Evaluate `model` on `task` over all ranks; rank 0 writes `out` atomically and returns the headline metric."""
    module = BENCHMARKS[task.eval.bench]
    items = load_items(task)
    complete = {item.group: "complete" for item in items}
    texts = generate(model, items, complete, cfg.eval_batch_size, cfg.max_new_tokens, rank, world, desc=task.name)
    parts: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(parts, texts)
    if rank != 0:
        return None
    merged = {k: v for part in parts if part for k, v in part.items()}
    ordered = [merged[item.key] for item in items]
    result = score_conditions(task.eval.bench, module, items, ordered, complete)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp, prediction_lines(items, ordered, complete), result, module.POINT_METRICS)
    tmp.rename(out)
    return module.headline(result["metrics"]["complete"])


def read_headline(task: TaskConfig, out: Path) -> float:
    return BENCHMARKS[task.eval.bench].headline(json.loads((out / "metrics.json").read_text())["metrics"]["complete"])


def summarize(matrix: list[list[float | None]]) -> dict:
    """Average accuracy and average forgetting (module docstring) of a lower-triangular accuracy matrix, after
    the last task and after every task."""

    def seen(i: int, j: int) -> float:
        value = matrix[i][j]
        if value is None:
            raise ValueError(f"accuracy matrix: task {j} was not evaluated after task {i}")
        return value

    def after(i: int) -> tuple[float, float]:
        last = [seen(i, j) for j in range(i + 1)]
        forgetting = [max(seen(k, j) for k in range(j, i)) - seen(i, j) for j in range(i)]
        return sum(last) / len(last), sum(forgetting) / len(forgetting) if forgetting else 0.0

    steps = [after(i) for i in range(len(matrix))]
    return {
        "matrix": matrix,
        "average_accuracy": steps[-1][0],
        "average_forgetting": steps[-1][1],
        "average_accuracy_after_task": [a for a, _ in steps],
        "average_forgetting_after_task": [f for _, f in steps],
    }


def markdown(names: list[str], summary: dict, adapter: str) -> str:
    def cell(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}"

    lines = [
        f"## Continual sequence ({adapter})",
        "",
        "| after training \\ evaluated on | " + " | ".join(names) + " | average accuracy | average forgetting |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for i, row in enumerate(summary["matrix"]):
        lines.append(
            f"| {i}: {names[i]} | " + " | ".join(cell(v) for v in row) + f" | "
            f"{cell(summary['average_accuracy_after_task'][i])} | "
            f"{cell(summary['average_forgetting_after_task'][i])} |"
        )
    lines += [
        "",
        f"Average accuracy {cell(summary['average_accuracy'])}, average forgetting "
        f"{cell(summary['average_forgetting'])} (points; the headline metric of each task's benchmark).",
    ]
    return "\n".join(lines) + "\n"


def run_continual(cfg: RunConfig) -> Path:
    """Train and evaluate the sequence (see the module docstring); returns output_dir."""
    root = Path(cfg.output_dir)
    tasks = cfg.continual.tasks
    device = pick_device(cfg)
    init_distributed(device, cfg.train.collective_timeout_minutes)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, root / "config.yaml")
    keep = not cfg.adapter.method.mergeable
    matrix: list[list[float | None]] = []
    previous = None
    for i in range(len(tasks)):
        task_cfg = task_config(cfg, i)
        run_dir = Path(task_cfg.output_dir)
        if not RunDir(run_dir).finished():
            train(task_cfg, start_from=previous, task=i)
            gc.collect()  # the finished engine sits in reference cycles: free its memory before the next model loads
            if device.type == "cuda":
                torch.cuda.empty_cache()
        shipped = run_dir / "shipped"
        if rank == 0 and not shipped.is_dir():
            merge_run(run_dir, shipped, keep_adapters=keep)
        dist.barrier()
        row: list[float | None] = [None] * len(tasks)
        model = None
        for j in range(i + 1):
            out = root / "eval" / f"after{i}" / tasks[j].name
            if not (out / "metrics.json").is_file():
                model = model or load_model(shipped).eval().to(device)
                evaluate(model, tasks[j], cfg.continual, out, rank, world)
                dist.barrier()
            row[j] = read_headline(tasks[j], out)
        matrix.append(row)
        previous = run_dir
    summary = summarize(matrix)
    if rank == 0:
        names = [t.name for t in tasks]
        (root / RESULT_JSON).write_text(
            json.dumps({"tasks": names, "adapter": cfg.adapter.name, **summary}, indent=2) + "\n"
        )
        (root / RESULT_MD).write_text(markdown(names, summary, cfg.adapter.name))
    dist.barrier()
    return root
