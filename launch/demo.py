"""The main job: the whole pipeline on the embedded synthetic default, on CPU, with 2 DeepSpeed ranks.

    python -m launch.demo [--out runs/demo] [--n 96] [--adapter imod] [--nproc 2] [--fresh]

tiny random-init components -> synthetic raw datasets in the real formats (real mp4/wav/jpg) -> WebDataset shards ->
stage 1 (projectors on image/video/audio captions) -> stage 2 (the adapter on synthetic MUSIC-AVQA + AVE and on
POPE- and MMBench-style image questions in the LLaVA format) -> merge -> eval on the held-out synthetic MUSIC-AVQA,
POPE and MMBench test sets, each score beside its media-blind baselines (results.md, results.json, results.png).
Every step leaves its files under --out and is skipped when they are already there (--fresh redoes all).
--out must be new, empty or an earlier demo output (it holds a `.avtrain-demo` file): anything else is refused, so
--fresh never deletes a directory the demo did not make.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCHES = ("music_avqa", "pope", "mmbench")
# shard directory (and raw directory): the converter that reads it
SOURCES = {"music_avqa": "music_avqa", "ave": "ave", "llava": "llava", "audiocaps": "audiocaps", "image_qa": "llava"}
# the training loop's own progress bar in its log: "train:  42%|....| 252/600 [..., loss=0.1234, ..."
TRAIN_BAR = re.compile(r"train:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*?loss=([0-9.]+)")
MARKER = ".avtrain-demo"  # in --out: the directory is the demo's own (what --fresh may delete)


def step(title: str):
    print(f"\n== {title}", flush=True)
    return time.time()


def done(start: float, what: str) -> None:
    print(f"   {what} ({time.time() - start:.0f} s)", flush=True)


def prepare_data(out: Path, n: int, seed: int) -> None:
    from data_prep import synthetic, synthetic_bench
    from data_prep.shard import write_shards
    from pipeline.testing.tiny import write_tiny

    t = step("tiny components, synthetic raw data, shards")
    if not (out / "components" / "model.yaml").is_file():
        write_tiny(out / "components", "llama", seed=seed, pretrain_steps=600, progress=True)
    if not (out / "raw" / "done").is_file():
        synthetic.generate(out / "raw", n=n, seed=seed, progress=True)
        synthetic_bench.generate(out / "raw" / "bench", n=max(8, n // 4), seed=seed)
        (out / "raw" / "done").touch()
    for source, converter in SOURCES.items():
        target = out / "shards" / source / "train"
        if not list(target.glob("*.index.json")):
            write_shards(converter, out / "raw" / source, "train", target, maxcount=16)
    done(t, f"components in {out / 'components'}, raw data in {out / 'raw'}, shards in {out / 'shards'}")


def train(out: Path, stage: int, nproc: int, extra: list[str]) -> Path:
    from pipeline.compare.runner import free_port

    run = out / f"stage{stage}"
    t = step(f"stage {stage}: deepspeed --num_gpus {nproc} launch/train.py --config configs/demo/stage{stage}.yaml")
    if (run / "final" / "trainables.safetensors").is_file():
        done(t, f"already trained: {run}")
        return run
    comp = out / "components"
    overrides = [
        f"output_dir={run}",
        f"model.llm={comp / 'llm'}",
        f"model.vision={comp / 'vision'}",
        f"model.audio={comp / 'audio'}",
        f"data.root={out / 'shards'}",
        *extra,
    ]
    if stage == 2:
        overrides.append(f"stage1_run={out / 'stage1'}")
    cmd = [
        str(Path(sys.executable).parent / "deepspeed"),
        "--num_gpus",
        str(nproc),
        "--master_port",  # not DeepSpeed's default 29500: another run on this machine may hold it
        str(free_port()),
        "launch/train.py",
        "--config",
        f"configs/demo/stage{stage}.yaml",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = out / f"stage{stage}.log"
    code = run_with_progress(cmd, env, log, f"stage {stage}")
    if code != 0:
        raise SystemExit(f"stage {stage} failed (exit {code}); see {log}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    done(t, f"{len(rows)} steps, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}; run directory {run}")
    return run


def _bar_state(log: Path) -> tuple[int, int, str] | None:
    """(step, total, loss) of the last progress-bar update in the log's tail, if there is one yet."""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        found = TRAIN_BAR.findall(f.read().decode(errors="replace"))
    return (int(found[-1][0]), int(found[-1][1]), found[-1][2]) if found else None


def run_with_progress(cmd: list[str], env: dict, log: Path, desc: str) -> int:
    """Run a training launch with its output in `log`, relaying its step count and loss to a progress bar here."""
    from tqdm import tqdm

    with log.open("w") as sink, tqdm(desc=desc, unit="step", dynamic_ncols=True) as bar:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(0.5)
            state = _bar_state(log)
            if state is not None:
                bar.total, bar.n = state[1], state[0]
                bar.set_postfix(loss=state[2], refresh=False)
                bar.refresh()
    return proc.returncode


def merge(out: Path) -> Path:
    from pipeline.merge import merge_run

    t = step("merge: python launch/merge.py --run stage2 --out merged")
    target = out / "merged"
    if not (target / "avllm.json").is_file():
        merge_run(out / "stage2", target)
    done(t, f"standalone checkpoint {target} (llm/ loads with stock transformers)")
    return target


def bench_args(out: Path, bench: str) -> list[str]:
    raw = out / "raw"
    return {
        "music_avqa": ["--data", str(raw / "music_avqa" / "avqa-test.json")],
        "pope": ["--data", str(raw / "bench" / "pope"), "--media-root", str(raw / "bench" / "pope" / "images")],
        "mmbench": ["--data", str(raw / "bench" / "mmbench.tsv")],
    }[bench]


def evaluate(out: Path, model: Path) -> dict[str, dict]:
    from pipeline.eval.runner import main as eval_main

    results = {}
    for bench in BENCHES:
        t = step(f"eval {bench}: python launch/eval.py --model merged --bench {bench}")
        target = out / "eval" / bench
        if (
            eval_main(
                [
                    "--model",
                    str(model),
                    "--bench",
                    bench,
                    *bench_args(out, bench),
                    "--out",
                    str(target),
                    "--batch-size",
                    "16",
                    "--max-new-tokens",
                    "8",
                ]
            )
            != 0
        ):
            raise SystemExit(f"eval {bench} failed")
        results[bench] = json.loads((target / "metrics.json").read_text())["metrics"]["complete"]
        done(t, f"{target}")
    return results


def baselines(out: Path) -> dict[str, dict[str, float]]:
    """Each benchmark's media-blind baselines on its demo test file (`pipeline.eval.baselines`)."""
    from pipeline.eval import BENCHMARKS
    from pipeline.eval.baselines import baselines as blind

    result = {}
    for bench in BENCHES:
        args = bench_args(out, bench)
        media = Path(args[3]) if len(args) > 2 else None
        result[bench] = blind(bench, BENCHMARKS[bench].load(Path(args[1]), media))
    return result


def claim(out: Path, fresh: bool) -> None:
    """Make `out` the demo's directory, marked by MARKER; a non-empty directory without the marker is not the
    demo's and is refused (never written into, never deleted). `fresh` empties a demo directory first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pick a directory for the demo")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(
            f"--out {out} is not empty and is not a demo output (no {MARKER} file); pick a new or empty directory"
        )
    if fresh and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m launch.demo; --fresh deletes this directory\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--n", type=int, default=128, help="synthetic train clips per source (test: n/4)")
    parser.add_argument("--seed", type=int, default=0, help="of the tiny components, the data and both stages")
    parser.add_argument("--adapter", default="imod", help="stage-2 adapter (any registered name)")
    parser.add_argument("--nproc", type=int, default=2, help="DeepSpeed ranks (CPU processes here)")
    parser.add_argument("--stage1", nargs="*", default=[], metavar="KEY=VALUE", help="stage-1 config overrides")
    parser.add_argument("--stage2", nargs="*", default=[], metavar="KEY=VALUE", help="stage-2 config overrides")
    parser.add_argument(
        "--fresh", action="store_true", help="delete --out (an earlier demo output) first and redo every step"
    )
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from pipeline.testing import demo_report

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    out = args.out.resolve()
    try:
        claim(out, args.fresh)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    prepare_data(out, args.n, args.seed)
    train(out, 1, args.nproc, [f"seed={args.seed}", *args.stage1])
    train(out, 2, args.nproc, [f"seed={args.seed}", f"adapter.name={args.adapter}", *args.stage2])
    merged = merge(out)
    results = evaluate(out, merged)
    table = demo_report.write(out, results, baselines(out), args.adapter)
    print(f"\n== results ({time.time() - start:.0f} s in all)\n{table}")
    print(
        f"\nPicture: {out / 'results.png'} (each score beside its baselines); loss curves: "
        f"{out / 'stage1' / 'loss.png'} and {out / 'stage2' / 'loss.png'}.\n"
        f"Everything is under {out}: stage1/ and stage2/ (config.yaml, ds_config.json, metrics.jsonl, tb/, "
        "loss.png, checkpoints/, final/), merged/, eval/<bench>/ (predictions.jsonl, metrics.json, results.md), "
        "results.md, results.json and results.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
