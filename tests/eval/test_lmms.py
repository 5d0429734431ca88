"""lmms-eval integration: `--model avtrain` found through the entry point, answering lmms-eval's own request objects
as `launch/eval.py` does, scoring continuations as a direct computation with the model does, and the MUSIC-AVQA / AVE
tasks scoring as `pipeline/eval/<bench>.py`. Skipped without
lmms-eval (`pip install -e ".[lmms-eval]"`; the README says how to keep the pinned stack)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager, get_task_dict  # noqa: E402

from pipeline.adapters.io import load_model  # noqa: E402
from pipeline.eval import ave, music_avqa, runner  # noqa: E402
from pipeline.eval.generate import build_sample  # noqa: E402
from pipeline.eval.lmms.model import AVTrainLMM  # noqa: E402
from pipeline.eval.lmms.tasks import write_task  # noqa: E402

MODULES = {"music_avqa": music_avqa, "ave": ave}
CHOICES = ["yes", "no", "two", "left"]
# the MUSIC-AVQA documents as an lmms-eval multiple-choice task (its `f1` result is the pair (gold, picked option))
MULTIPLE_CHOICE = f"""\
task: avtrain_music_avqa_choice
include: avtrain_music_avqa.yaml
output_type: multiple_choice
doc_to_choice: {CHOICES}
doc_to_target: 0
process_results: null
metric_list:
  - metric: f1
"""


@pytest.fixture(scope="module")
def tasks(bench_data, tmp_path_factory) -> dict:
    """lmms-eval's task objects for both benchmarks, loaded by its TaskManager from the written configs."""
    out = tmp_path_factory.mktemp("lmms_tasks")
    for bench in MODULES:
        write_task(out, bench, Path(bench_data[bench][1]), max_new_tokens=6)
    (out / "avtrain_music_avqa_choice.yaml").write_text(MULTIPLE_CHOICE)
    found = get_task_dict(["avtrain_music_avqa", "avtrain_ave", "avtrain_music_avqa_choice"],
                          TaskManager(include_path=str(out)))
    return {name.removeprefix("avtrain_"): found[name] for name in found}


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


def direct_logprobs(model, item, continuation: str) -> tuple[float, bool, torch.Tensor]:
    """Σ log-softmax of the logits at the continuation's tokens after the generation prompt (one unpadded row), whether
    each is the argmax, and the logits after the prompt."""
    processor = model.build_processor()
    prompt = processor([build_sample(item, model.config.num_frames, frozenset())])
    prompt.pop("labels")
    tokens = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    n = prompt["input_ids"].shape[1]
    ids = torch.cat([prompt["input_ids"], torch.tensor([tokens])], dim=1)
    with torch.no_grad():
        logits = model(**{**prompt, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                          "question_mask": None}).logits[0].double()
    picked = logits[n - 1: -1].log_softmax(-1)[torch.arange(len(tokens)), tokens]
    return float(picked.sum()), bool((logits[n - 1: -1].argmax(-1) == torch.tensor(tokens)).all()), logits[n - 1]


def test_loglikelihood_is_the_continuations_log_probability(tasks, bench_data, checkpoint):
    task, name = tasks["music_avqa"], "avtrain_music_avqa"
    docs = task.test_docs()
    items = music_avqa.load(Path(bench_data["music_avqa"][1]))[:3]  # the documents' items, in order
    reference = load_model(checkpoint).eval()
    tokenizer = reference.tokenizer
    continuations = []
    for item in items:  # the argmax token after the prompt, the runner-up, and a few words
        top = direct_logprobs(reference, item, " x")[2].topk(2).indices.tolist()
        encoded = [tokenizer(tokenizer.decode(t), add_special_tokens=False)["input_ids"] for t in top]
        assert encoded == [[t] for t in top]  # each decodes to a text that encodes back to it alone
        continuations.append([tokenizer.decode(t) for t in top] + [" two guitars"])
    requests = [
        Instance(request_type="loglikelihood", idx=j, metadata={"task": name, "doc_id": i, "repeats": 1},
                 arguments=(task.doc_to_text(docs[i]), text, task.doc_to_visual, i, name, "test"))
        for i in range(len(items)) for j, text in enumerate(continuations[i])
    ]
    requests.append(Instance(request_type="loglikelihood", idx=0, metadata={"task": name, "doc_id": 0, "repeats": 1},
                             arguments=("", " yes")))  # lmms-eval's unconditional request: no document, no media
    model = get_model("avtrain")(pretrained=str(checkpoint), batch_size=4)  # batches mix lengths: padding matters
    model.task_dict = {name: {"test": docs}}
    got = model.loglikelihood(requests)

    expected = [direct_logprobs(reference, items[i], text)[:2] for i in range(len(items)) for text in continuations[i]]
    expected.append(direct_logprobs(reference, replace(items[0], prompt="", video=None, soundtrack=False), " yes")[:2])
    assert len(got) == len(expected)
    for (loss, greedy), (logprob, direct_greedy) in zip(got, expected):
        assert loss == pytest.approx(-logprob, abs=1e-5)  # lmms-eval's convention: the negative log-likelihood
        assert greedy is direct_greedy
    assert [greedy for _, greedy in got[:9]] == [True, False, False] * 3  # argmax, runner-up, several words


def test_multiple_choice_picks_the_most_likely_option(tasks, bench_data, checkpoint):
    """lmms-eval's own multiple-choice requests and scoring pick the option with the highest log-likelihood."""
    task, name = tasks["music_avqa_choice"], "avtrain_music_avqa_choice"
    docs = task.test_docs()
    items = music_avqa.load(Path(bench_data["music_avqa"][1]))
    model = get_model("avtrain")(pretrained=str(checkpoint), batch_size=8)
    model.task_dict = {name: {"test": docs}}
    reference = load_model(checkpoint).eval()
    picked, expected = [], []
    for i in range(4):
        requests = task.construct_requests(i, task.doc_to_text(docs[i]),
                                           metadata={"task": name, "doc_id": i, "repeats": 1, "split": "test"})
        assert [r.args[1] for r in requests] == [f" {choice}" for choice in CHOICES]
        picked.append(task.process_results(docs[i], model.loglikelihood(requests))["f1"][1])
        expected.append(max(range(len(CHOICES)),
                            key=lambda c: direct_logprobs(reference, items[i], f" {CHOICES[c]}")[0]))
    assert picked == expected
