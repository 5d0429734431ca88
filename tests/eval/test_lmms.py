"""lmms-eval integration: `--model avtrain` found through the entry point, answering lmms-eval's own request objects
as `launch/eval.py` does, and the MUSIC-AVQA / AVE tasks scoring as `pipeline/eval/<bench>.py`. Skipped without
lmms-eval (`pip install -e ".[lmms-eval]"`; the README says how to keep the pinned stack)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager, get_task_dict  # noqa: E402

from pipeline.eval import ave, music_avqa, runner  # noqa: E402
from pipeline.eval.lmms.model import AVTrainLMM  # noqa: E402
from pipeline.eval.lmms.tasks import write_task  # noqa: E402

MODULES = {"music_avqa": music_avqa, "ave": ave}


@pytest.fixture(scope="module")
def tasks(bench_data, tmp_path_factory) -> dict:
    """lmms-eval's task objects for both benchmarks, loaded by its TaskManager from the written configs."""
    out = tmp_path_factory.mktemp("lmms_tasks")
    for bench in MODULES:
        write_task(out, bench, Path(bench_data[bench][1]), max_new_tokens=6)
    found = get_task_dict(["avtrain_music_avqa", "avtrain_ave"], TaskManager(include_path=str(out)))
    return {bench: found[f"avtrain_{bench}"] for bench in MODULES}


def test_lmms_eval_finds_the_avtrain_model_by_name():
    assert get_model("avtrain") is AVTrainLMM


@pytest.mark.parametrize("bench", sorted(MODULES))
def test_requests_are_answered_as_launch_eval_answers(bench, tasks, bench_data, checkpoint, tmp_path):
    assert runner.main(["--bench", bench, *bench_data[bench], "--model", str(checkpoint), "--out", str(tmp_path),
                        "--max-new-tokens", "6"]) == 0
    expected = [json.loads(line)["text"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    task, name = tasks[bench], f"avtrain_{bench}"
    docs = task.test_docs()
    model = get_model("avtrain")(pretrained=str(checkpoint), batch_size=3)  # another batching than launch/eval.py
    model.task_dict = {name: {"test": docs}}
    requests = [
        Instance(request_type="generate_until", idx=0, metadata={"task": name, "doc_id": i, "repeats": 1},
                 arguments=(task.doc_to_text(doc), dict(task.config.generation_kwargs), task.doc_to_visual, i, name,
                            "test"))
        for i, doc in enumerate(docs)
    ]
    assert len(requests) == len(expected) > 0
    assert model.generate_until(requests) == expected


@pytest.mark.parametrize("bench", sorted(MODULES))
def test_task_scores_as_the_benchmark_module(bench, tasks, bench_data):
    task = tasks[bench]
    items = MODULES[bench].load(Path(bench_data[bench][1]))
    if bench == "music_avqa":  # right, wrong, unparsable and right-but-wordy answers
        texts = [item.gold["answer"] if i % 3 == 0 else "yes, two" if i % 3 == 1 else f"It is {item.gold['answer']}."
                 for i, item in enumerate(items)]
    else:
        texts = [f"{item.gold['category']}, from second {item.gold['start']} to second 10." if i % 2 else "Silence."
                 for i, item in enumerate(items)]
    results = [task.process_results(doc, [text]) for doc, text in zip(task.test_docs(), texts)]
    aggregations = task.aggregation()
    scored = {name: aggregations[name]([r[name] for r in results[::-1]]) for name in results[0]}  # any order
    expected = MODULES[bench].score(items, texts)
    assert scored == {name: expected[name] for name in scored}
    assert 0 < expected["unparsable"] < 1
