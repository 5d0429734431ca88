"""The synthetic image questions: answered by the image alone, balanced, in the benchmarks' own prompts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from data_prep import scenes, synthetic, synthetic_bench
from data_prep.shard import write_shards
from pipeline.eval import mmbench, pope


def _right(scene: scenes.Scene, q: scenes.Question) -> bool:
    objects = [tuple(o) for o in scene.objects]
    if q.kind == "exists":
        return (q.answer == "yes") == any(q.text == f"Is there a {c} shape in the image?" for _, c, _ in objects)
    if q.kind == "colour":
        return any(q.text == f"What colour is the shape in the {p}?" and c == q.answer for _, c, p in objects)
    return scenes.COUNTS[len(objects) - 1] == q.answer


def test_every_answer_follows_from_the_scene_and_the_text_alone_cannot_answer():
    pairs = scenes.draw(("exists", *scenes.CHOICE_KINDS), 960, np.random.default_rng(0))
    assert all(_right(scene, q) for scene, q in pairs)
    for scene, _ in pairs:  # distinct shapes, colours and quadrants
        assert all(len({o[i] for o in scene.objects}) == len(scene.objects) for i in range(3))
    by_text = Counter((q.text, q.answer) for _, q in pairs if q.kind == "exists")
    assert set(by_text.values()) == {40}  # each colour asked 80 times: 40 yes, 40 no
    for kind in scenes.CHOICE_KINDS:
        answers = Counter(q.target() for _, q in pairs if q.kind == kind)
        letters = Counter(q.letter() for _, q in pairs if q.kind == kind)
        assert set(answers) == set(scenes.ANSWERS[kind]) and set(answers.values()) == {80}
        assert set(letters.values()) == {80}
    sizes = Counter(len(scene.objects) for scene, q in pairs if q.kind != "count")
    assert set(sizes) == set(scenes.SCENE_SIZES) and len(set(sizes.values())) == 1


def test_a_scene_described_in_words_names_every_colour_where_it_is():
    scene = scenes.Scene([["circle", "red", "top left"], ["cross", "blue", "bottom right"]], (0, 0))
    assert scene.describe() == "The image shows a red shape in the top left and a blue shape in the bottom right."


def test_training_json_uses_the_benchmark_prompts_and_shards_as_llava(tmp_path):
    synthetic.image_qa(tmp_path / "raw", 8, np.random.default_rng(0))
    entries = json.loads((tmp_path / "raw" / "train.json").read_text())
    assert len(entries) == 32 and all((tmp_path / "raw" / e["image"]).is_file() for e in entries)
    human, gpt = (turn["value"] for turn in entries[-1]["conversations"])
    options = [line[3:] for line in human.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
    assert human.startswith("<image>\n") and human.endswith(mmbench.INSTRUCTION) and gpt in options  # option text
    human, gpt = (turn["value"] for turn in entries[0]["conversations"])
    assert human.endswith(pope.INSTRUCTION.strip()) and gpt in ("yes", "no")
    index = write_shards("llava", tmp_path / "raw", "train", tmp_path / "shards", progress=False)
    assert index["total"] == 32 and index["skipped"] == {}


def test_held_out_bench_files_load_with_the_benchmark_readers(tmp_path):
    paths = synthetic_bench.generate(tmp_path, n=8, seed=0)
    items = mmbench.load(paths["mmbench"])
    assert len(items) == 32 and {i.gold["category"] for i in items} == set(scenes.CHOICE_KINDS)
    items = pope.load(paths["pope"], paths["pope"] / "images")
    assert len(items) == 16 and Counter(i.gold["label"] for i in items) == {"yes": 8, "no": 8}
