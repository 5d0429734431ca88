"""lmms-eval tasks for MUSIC-AVQA and AVE (lmms-eval has neither), on local copies of the official files.

    python -m pipeline.eval.lmms.tasks --out lmms_tasks --music-avqa /data/MUSIC-AVQA/avqa-test.json --ave /data/AVE
    lmms-eval --model avtrain --model_args pretrained=runs/merged --include_path lmms_tasks \
        --tasks avtrain_music_avqa,avtrain_ave

writes one task per benchmark into `--out`: a YAML config and a small module naming the local paths. The documents
are the items `pipeline.eval.<bench>.load` reads (same files, same checks, same prompts, media as paths), and the
metrics are `pipeline.eval.<bench>.score` over all answers, so a model scores exactly as with `launch/eval.py`.
"""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

from pipeline.eval import ave, music_avqa
from pipeline.eval.bench import BenchError, Item

BENCHES = {"music_avqa": music_avqa, "ave": ave}
METRICS = {"music_avqa": ("overall", "unparsable"), "ave": ("segment_accuracy", "event_accuracy", "unparsable")}
# what datasets reads before `process_docs` puts the benchmark's items in its place
LOADERS = {"music_avqa": "json", "ave": "text"}

YAML = """\
task: avtrain_{bench}
dataset_path: {loader}
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: generate_until
process_docs: !function {module}.process_docs
doc_to_visual: !function {module}.doc_to_visual
doc_to_text: !function {module}.doc_to_text
doc_to_target: index
process_results: !function {module}.process_results
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  until: []
metric_list:
{metrics}
"""
METRIC = """\
  - metric: {name}
    aggregation: !function {module}.{name}
    higher_is_better: {higher}
"""
MODULE = """\
# written by pipeline/eval/lmms/tasks.py: the {bench} task on {data}
from pipeline.eval.lmms.tasks import task_functions

globals().update(task_functions({bench!r}, {data!r}, {media_root!r}))
"""


@cache
def _items(bench: str, data: str, media_root: str | None) -> tuple[Item, ...]:
    return tuple(BENCHES[bench].load(Path(data), Path(media_root) if media_root else None))


def task_functions(bench: str, data: str, media_root: str | None) -> dict:
    """The functions a task config names: documents, prompt, visuals, per-answer results and one aggregation per
    metric (the benchmark's `score` over every answer, in document order)."""

    def process_docs(dataset):
        from datasets import Dataset

        return Dataset.from_list([{"index": i} for i in range(len(_items(bench, data, media_root)))])

    def item(doc: dict) -> Item:
        return _items(bench, data, media_root)[doc["index"]]

    def doc_to_visual(doc: dict) -> list[str]:
        found = item(doc)
        return [str(p) for p in (found.video, found.audio, found.image) if p is not None]

    def process_results(doc: dict, results: list[str]) -> dict:
        return {name: (doc["index"], results[0]) for name in METRICS[bench]}

    def aggregation(name: str):
        def aggregate(answers: list[tuple[int, str]]) -> float:
            answers = sorted(answers)
            items = [_items(bench, data, media_root)[i] for i, _ in answers]
            return BENCHES[bench].score(items, [text for _, text in answers])[name]

        return aggregate

    return {
        "process_docs": process_docs,
        "doc_to_visual": doc_to_visual,
        "doc_to_text": lambda doc: item(doc).prompt,
        "process_results": process_results,
        **{name: aggregation(name) for name in METRICS[bench]},
    }


def write_task(out: Path, bench: str, data: Path, media_root: Path | None = None, max_new_tokens: int = 32) -> Path:
    """The task config of `bench` on `data` in `out` (checked by loading it first); returns the YAML's path."""
    data = data.resolve()
    media_root = media_root.resolve() if media_root else None
    items = _items(bench, str(data), str(media_root) if media_root else None)  # BenchError on a bad file
    data_file = data / ave.SPLIT_FILES["test"] if bench == "ave" and data.is_dir() else data
    module = f"avtrain_{bench}_task"
    metrics = "".join(
        METRIC.format(name=name, module=module, higher=str(name != "unparsable").lower()) for name in METRICS[bench]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{module}.py").write_text(
        MODULE.format(bench=bench, data=str(data), media_root=str(media_root) if media_root else None)
    )
    path = out / f"avtrain_{bench}.yaml"
    path.write_text(
        YAML.format(
            bench=bench,
            loader=LOADERS[bench],
            data_file=data_file,
            module=module,
            max_new_tokens=max_new_tokens,
            metrics=metrics,
        )
    )
    print(f"{path}: {len(items)} {bench} questions")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for lmms-eval's --include_path")
    parser.add_argument("--music-avqa", type=Path, help="the official annotation json (avqa-test.json)")
    parser.add_argument("--music-avqa-media", type=Path, help="its media root (default: the json's folder)")
    parser.add_argument("--ave", type=Path, help="the AVE folder (testSet.txt) or a split file")
    parser.add_argument("--ave-media", type=Path, help="its media root (default: that folder)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if args.music_avqa is None and args.ave is None:
        parser.error("give --music-avqa and/or --ave")
    try:
        if args.music_avqa:
            write_task(args.out, "music_avqa", args.music_avqa, args.music_avqa_media, args.max_new_tokens)
        if args.ave:
            write_task(args.out, "ave", args.ave, args.ave_media, args.max_new_tokens)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
