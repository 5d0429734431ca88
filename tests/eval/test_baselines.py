"""Media-blind baselines, scored by each benchmark's own scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep import synthetic_bench
from pipeline.eval import mmbench, pope
from pipeline.eval.baselines import baselines


def test_pope_and_mmbench_baselines(tmp_path):
    paths = synthetic_bench.generate(tmp_path, n=8, seed=0)
    blind = baselines("pope", pope.load(paths["pope"], paths["pope"] / "images"))
    assert blind["one_answer_accuracy"] == 0.5 and blind["one_answer_f1"] == pytest.approx(2 / 3)
    blind = baselines("mmbench", mmbench.load(paths["mmbench"]))
    assert blind["chance"] == pytest.approx(0.25**4) and blind["best_letter"] == 0.0


def test_mmbench_best_option_text_is_the_most_frequent_answer_of_each_category(tmp_path):
    # 16 questions: 8 per category, each of a category's 4 answers twice; one fixed text per category gets 2 of 8
    items = mmbench.load(synthetic_bench.generate(tmp_path, n=16, seed=0)["mmbench"])
    assert baselines("mmbench", items)["best_option_text"] == 0.25
    # the right text in every round scores 1, whatever letter the rotation gave it
    truth = [item.gold["options"][mmbench.LETTERS.index(item.gold["answer"])] for item in items]
    assert mmbench.score(items, truth)["overall"] == 1.0


def test_music_avqa_baselines(bench_data):
    from pipeline.eval import music_avqa

    items = music_avqa.load(Path(bench_data["music_avqa"][1]))
    blind = baselines("music_avqa", items)
    assert 0 < blind["majority"] <= blind["type_prior"] <= 1
