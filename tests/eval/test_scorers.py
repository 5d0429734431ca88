"""Each scorer on hand-made predictions with hand-computed metrics, including the extraction traps of the issue."""

from __future__ import annotations

import base64
import csv
import io

import pytest
from PIL import Image

from pipeline.eval import BENCHMARKS, ave, mmbench, mme, music_avqa, pope
from pipeline.eval.bench import Item, assign_conditions, unique_phrase

OPTIONS = ["cat", "dog", "bird"]


@pytest.mark.parametrize("text, options, expected", [
    ("B", OPTIONS, "B"),
    ("The answer is C", OPTIONS, "C"),
    ("BAD", OPTIONS, None),                       # letter inside a word
    ("Apple", OPTIONS, None),
    ("a", OPTIONS, None),                         # lower case is not an option letter
    ("Not sure", OPTIONS, None),
    ("(B).", OPTIONS, "B"),
    ("(A)", OPTIONS, "A"),
    ("A).", OPTIONS, "A"),
    ("C)", OPTIONS, "C"),
    ("B,", OPTIONS, "B"),
    ("C:", OPTIONS, "C"),
    ("Answer:A", OPTIONS, "A"),
    ("A. cat", OPTIONS, "A"),
    ("A or B", OPTIONS, None),                    # two bare letters: unresolved, not the first
    ("(A) cat (B) dog", OPTIONS, None),
    ("D", OPTIONS, None),                         # not one of this question's letters
    ("It is a dog.", OPTIONS, "B"),
    ("Bird", OPTIONS, "C"),
    ("a cat and a dog", OPTIONS, None),           # two option texts in one answer
    ("a category", OPTIONS, None),                # option text inside a word
    ("dark red", ["red", "dark red"], "B"),       # the longer option text wins over the one inside it
])
def test_mmbench_extraction(text, options, expected):
    assert mmbench.extract(text, options) == expected


def image_b64(colour: str = "red") -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def write_tsv(path, rows: list[dict], drop: str | None = None):
    columns = [c for c in ("index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "l2-category",
                           "image", "source") if c != drop]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(index: int, answer: str, category: str, options=OPTIONS, image: str | None = None, hint: str = "") -> dict:
    return {"index": index, "question": "Which animal?", "hint": hint, "answer": answer, "category": category,
            "l2-category": "animals", "image": image or image_b64(), "source": "x",
            **{letter: text for letter, text in zip("ABCDE", options)}}


def test_mmbench_circular_rotation(tmp_path):
    items = mmbench.load(write_tsv(tmp_path / "mmb.tsv", [row(7, "B", "pets", hint="A hint.")]))
    assert [i.fields for i in items] == [{"index": 7, "round": k} for k in range(3)]
    assert [i.gold["options"] for i in items] == [["cat", "dog", "bird"], ["dog", "bird", "cat"],
                                                  ["bird", "cat", "dog"]]
    assert [i.gold["answer"] for i in items] == ["B", "A", "C"]   # "dog" follows its letter
    assert items[1].prompt == ("A hint.\nWhich animal?\nA. dog\nB. bird\nC. cat\n"
                               "Answer with the option's letter from the given choices directly.")
    assert mmbench.score(items, ["B", "A", "C"])["overall"] == 1.0
    assert mmbench.score(items, ["dog", "(A).", "C"])["overall"] == 1.0
    assert mmbench.score(items, ["B", "A", "B"])["overall"] == 0.0      # one wrong rotation fails the question
    assert mmbench.score(items, ["B", "A", "no idea"]) == {"overall": 0.0, "category": {"pets": 0.0},
                                                           "l2_category": {"animals": 0.0}, "unresolved": 1 / 3}


def test_mmbench_metrics_and_image_reference(tmp_path):
    rows = [row(1, "A", "pets"), row(2, "C", "wild", image="1"), row(3, "D", "wild", options=["a", "b", "c", "d"])]
    items = mmbench.load(write_tsv(tmp_path / "mmb.tsv", rows))
    assert items[3].image_b64 == items[0].image_b64          # an all-digit image cell refers to that row's image
    assert len(items) == 3 + 3 + 4
    texts = ["A", "C", "B"] + ["C", "B", "A"] + ["D", "C", "?", "A"]   # q1 right, q2 right, q3 wrong (1 unresolved)
    assert mmbench.score(items, texts) == {"overall": 2 / 3, "category": {"pets": 1.0, "wild": 0.5},
                                           "l2_category": {"animals": 2 / 3}, "unresolved": 1 / 10}


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("No.", "no"), ("no.", "no"), ("not", "no"), ("Not sure", "no"), ("There is no dog", "no"),
    ("No, there is a cat", "no"), ("Nothing", "yes"), ("Yes. No cat though.", "yes"), ("notable", "yes"),
    ("No\nthere is none", "yes"),   # the reference splits on single spaces only
])
def test_pope_parse(text, expected):
    assert pope.parse(text) == expected


def pope_item(qid: int, label: str, split: str = "random") -> Item:
    return Item(fields={"split": split, "question_id": qid}, prompt="", gold={"label": label}, group=str(qid))


def test_pope_metrics():
    items = [pope_item(i, g) for i, g in enumerate(["yes", "yes", "no", "no", "yes"])]
    items.append(pope_item(9, "no", split="adversarial"))
    metrics = pope.score(items, ["Yes", "no.", "yes", "Not at all", "Yes, there is", "Yes"])
    # random: tp 2, fn 1, fp 1, tn 1
    assert metrics["random"] == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                               "yes_ratio": 0.6})
    assert metrics["adversarial"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 1.0}


VOCAB = list(music_avqa.OFFICIAL_ANSWERS)


@pytest.mark.parametrize("text, expected", [
    ("2", "two"), ("two", "two"), ("There are 2 instruments.", "two"), ("10", "ten"), ("11", None),
    ("acoustic guitar", "acoustic_guitar"), ("acoustic_guitar", "acoustic_guitar"),
    ("Acoustic-Guitar.", "acoustic_guitar"),
    ("more than ten", "more than ten"), ("More than 10!", "more than ten"), ("Yes.", "yes"),
    ("<answer>Yes</answer> I think two", "yes"), ("yes, two", None), ("maybe", None), ("guitar", None),
    ("notice", None),
])
def test_music_avqa_resolve(text, expected):
    assert music_avqa.resolve(text, VOCAB) == expected


def avqa_item(qid: int, answer: str, qtype: str) -> Item:
    group = qtype.split("/")[0]
    return Item(fields={"question_id": qid}, prompt="", gold={"answer": answer, "group": group, "subtype": qtype},
                group=str(qid))


def test_music_avqa_metrics():
    items = [avqa_item(1, "two", "Audio/Counting"), avqa_item(2, "acoustic_guitar", "Visual/Location"),
             avqa_item(3, "yes", "Audio-Visual/Existential"), avqa_item(4, "left", "Visual/Location"),
             avqa_item(5, "three", "Audio/Counting")]
    texts = ["2", "acoustic guitar", "yes, two", "right", "There are three."]
    assert music_avqa.score(items, texts) == {
        "overall": 3 / 5, "group": {"Audio": 1.0, "Visual": 0.5, "Audio-Visual": 0.0},
        "subtype": {"Audio/Counting": 1.0, "Visual/Location": 0.5, "Audio-Visual/Existential": 0.0},
        "unparsable": 1 / 5}


@pytest.mark.parametrize("text, expected", [
    ("Church bell, from second 2 to second 6.", ("Church bell", 2, 6)),
    ("church BELL 2-6", ("Church bell", 2, 6)),
    ("Violin, fiddle, from second 0 to second 10.", ("Violin, fiddle", 0, 10)),
    ("Cat from 3 to 5", ("Cat", 3, 5)),
    ("Violin from 0 to 10", None),               # not a full class name
    ("Church bell and Bark, 2 to 6", None),       # two classes
    ("Church bell, from second 6 to second 2.", None),
    ("Church bell, from second 2 to second 11.", None),
    ("Church bell", None),
    ("category 3 to 5", None),
])
def test_ave_parse(text, expected):
    assert ave.parse(text) == expected


def test_ave_metrics():
    items = [Item(fields={"video_id": f"v{i}"}, prompt="", gold={"category": "Church bell", "start": 2, "end": 6},
                  group=f"v{i}") for i in range(4)]
    texts = ["Church bell, from second 2 to second 6.", "Bark, from second 2 to second 6.",
             "Church bell, from second 0 to second 10.", "no idea"]   # 10 + 6 + 4 + 0 (never the free background)
    assert ave.score(items, texts) == {"segment_accuracy": 20 / 40, "event_accuracy": 2 / 4, "unparsable": 1 / 4}


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no", "no"), ("No, it is not.", "no"), ("Yes.", "yes"), (" yes", "yes"), ("I think yes", "other"),
    ("Not really", "no"), ("nope", "no"), ("Maybe", "other"), ("The answer is no", "other"),
])
def test_mme_parse(text, expected):
    assert mme.parse(text) == expected


def mme_item(task: str, image: str, answer: str) -> Item:
    return Item(fields={"question_id": f"{task}/{image}/{answer}"}, prompt="", gold={"task": task, "answer": answer},
                group=f"{task}/{image}")


def test_mme_metrics():
    items = [mme_item("existence", "1.jpg", "yes"), mme_item("existence", "1.jpg", "no"),
             mme_item("existence", "2.jpg", "yes"), mme_item("existence", "2.jpg", "no"),
             mme_item("code_reasoning", "3.png", "yes"), mme_item("code_reasoning", "3.png", "no")]
    texts = ["Yes", "No.", "yes", "yes", "Maybe", "no"]
    metrics = mme.score(items, texts)
    assert metrics["subtask"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0}
    assert metrics["subtask"]["code_reasoning"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0}
    assert (metrics["perception"], metrics["cognition"]) == (125.0, 50.0)


def test_unique_phrase():
    phrases = [("ten", "ten"), ("more than ten", "more than ten"), ("two", "two")]
    assert unique_phrase("more than ten", phrases) == "more than ten"
    assert unique_phrase("ten or two", phrases) is None
    assert unique_phrase("twenty", phrases) is None
    assert unique_phrase("two and two", phrases) == "two"


def test_conditions_are_seeded_and_disjoint():
    items = [Item(fields={"question_id": i}, prompt="", gold={}, group=str(i // 2)) for i in range(40)]
    both = assign_conditions(items, "both", 0.25, seed=3)
    assert both == assign_conditions(items, "both", 0.25, seed=3)
    assert sorted(both.values()).count("audio-missing") == 5 and sorted(both.values()).count("visual-missing") == 5
    assert both != assign_conditions(items, "both", 0.25, seed=4)
    audio = assign_conditions(items, "audio", 0.5, seed=3)
    assert set(audio.values()) == {"complete", "audio-missing"} and list(audio.values()).count("audio-missing") == 10
    assert set(assign_conditions(items, None, 0.5, seed=3).values()) == {"complete"}


@pytest.mark.parametrize("bench, metrics, expected", [
    ("music_avqa", {"overall": 0.4, "unparsable": 0.1}, 0.4),
    ("ave", {"segment_accuracy": 0.3, "event_accuracy": 0.5}, 0.3),
    ("mmbench", {"overall": 0.6, "category": {}}, 0.6),
    ("mme", {"perception": 1200.0, "cognition": 300.0}, 1200.0),
    ("pope", {"random": {"accuracy": 0.9}, "adversarial": {"accuracy": 0.7}}, 0.8),
])
def test_headline_is_the_number_each_benchmark_leads_with(bench, metrics, expected):
    assert BENCHMARKS[bench].headline(metrics) == pytest.approx(expected)
