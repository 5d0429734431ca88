"""The missing-modality grid (`launch/eval.py --missing-grid`) on the tiny checkpoint: which conditions run, what the
model is fed under each, and that the drops in metrics.json are (complete − condition) / complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.eval.runner import main
from pipeline.data.missing import MissingConfig, lost_modality
from pipeline.eval import music_avqa
from pipeline.eval.bench import CONDITIONS
from pipeline.eval.generate import build_sample
from pipeline.eval.grid import grid_conditions, relative_drop, score_grid, train_condition
from pipeline.eval.report import flatten_metrics
from pipeline.model.avllm import AVLLM

COMMON = ["--max-new-tokens", "2", "--batch-size", "8", "--missing-grid", "--missing-rate", "0.5", "--seed", "3"]


@pytest.fixture(scope="module")
def grids(bench_data, checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    for bench, fill in (("music_avqa", "drop"), ("pope", "drop"), ("pope", "placeholder")):
        assert main(["--model", str(checkpoint), "--bench", bench, *bench_data[bench], "--out",
                     str(root / f"{bench}-{fill}"), *COMMON, "--missing-fill", fill]) == 0
    return root


def predictions(out: Path, test: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"predictions-{test}.jsonl").read_text().splitlines()]


def test_music_avqa_runs_every_condition_with_the_training_mixture(grids, bench_data):
    out = grids / "music_avqa-drop"
    result = json.loads((out / "metrics.json").read_text())
    assert list(result["metrics"]) == ["complete", "audio-missing", "visual-missing", "mixed"]
    assert result["train_condition"] == "complete" and result["items"]["mixed"] == 16
    assert not any("condition" in line for line in predictions(out, "complete"))
    for test in ("audio-missing", "visual-missing"):
        assert {line["condition"] for line in predictions(out, test)} == {test}
    # mixed: each question's loss is the training rule's draw for its group (MUSIC-AVQA: the question id)
    cfg = MissingConfig(rate=0.5, type="both", both_ratio=0.5, seed=3)
    lost = {str(line["question_id"]): line.get("condition", "complete") for line in predictions(out, "mixed")}
    assert lost == {q: {"audio": "audio-missing", "visual": "visual-missing", None: "complete"}[lost_modality(cfg, q)]
                    for q in lost}
    assert result["mixed_lost"] == {m: sum(c == f"{m}-missing" for c in lost.values()) for m in ("audio", "visual")}
    assert 0 < sum(result["mixed_lost"].values()) < 16
    # every drop is the hand computation on the metrics beside it
    complete = flatten_metrics(result["metrics"]["complete"])
    for test in ("audio-missing", "visual-missing", "mixed"):
        other, drop = flatten_metrics(result["metrics"][test]), flatten_metrics(result["relative_drop"][test])
        assert drop.keys() == complete.keys()
        for name, value in complete.items():
            assert drop[name] == (pytest.approx((value - other[name]) / value) if value else None)
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "## music_avqa: trained complete, tested under missing modalities"
    assert [row.split("|")[1].strip() for row in table[6:]] == [
        "complete", "audio-missing", "visual-missing",
        f"mixed η=0.5 (audio {result['mixed_lost']['audio']}, visual {result['mixed_lost']['visual']})"]
    assert table[4].startswith("| test condition | n | overall % |") and table[4].endswith("| headline drop % |")
    # each per-condition file is a predictions file: scoring it gives that condition's metrics
    rescored = grids / "rescored"
    assert main(["--bench", "music_avqa", *bench_data["music_avqa"], "--predictions",
                 str(out / "predictions-audio-missing.jsonl"), "--out", str(rescored)]) == 0
    assert json.loads((rescored / "metrics.json").read_text())["metrics"] == {
        "audio-missing": result["metrics"]["audio-missing"]}


@pytest.mark.parametrize("fill", ["drop", "placeholder"])
def test_pope_has_no_audio_conditions(grids, fill):
    result = json.loads((grids / f"pope-{fill}" / "metrics.json").read_text())
    assert list(result["metrics"]) == ["complete", "visual-missing"] == grid_conditions(frozenset({"visual"}))
    assert "mixed_lost" not in result and result["fill"] == fill
    assert {line["condition"] for line in predictions(grids / f"pope-{fill}", "visual-missing")} == {"visual-missing"}
    assert result["headline_drop"]["visual-missing"] == pytest.approx(
        1 - result["headline"]["visual-missing"] / result["headline"]["complete"])
    assert f"Fill: {fill}." in (grids / f"pope-{fill}" / "results.md").read_text()


def test_lost_inputs_and_the_placeholder_layout(bench_data, checkpoint):
    """Dropping removes the media and its tokens; a placeholder keeps every token where it was, with zero input."""
    processor = AVLLM.from_pretrained(checkpoint).build_processor()
    item = music_avqa.load(Path(bench_data["music_avqa"][1]))[0]
    full = build_sample(item, 4, CONDITIONS["complete"])
    assert full.conversations[0]["value"].startswith("<video>\n<audio>\n")
    ids = processor([full])["input_ids"]
    for condition, modality in (("audio-missing", "audio"), ("visual-missing", "video")):
        dropped = build_sample(item, 4, CONDITIONS[condition])
        assert getattr(dropped, modality) is None and f"<{modality}>" not in dropped.conversations[0]["value"]
        assert processor([dropped])["input_ids"].shape[1] < ids.shape[1]
        filled = build_sample(item, 4, CONDITIONS[condition], fill="placeholder")
        assert filled.conversations == full.conversations and not np.any(getattr(filled, modality))
        assert getattr(filled, modality).shape == getattr(full, modality).shape
        assert torch.equal(processor([filled])["input_ids"], ids)


def test_relative_drop_of_real_scores(bench_data):
    """MUSIC-AVQA's scorer on chosen answers: half the questions wrong under a condition is a drop of one half."""
    items = music_avqa.load(Path(bench_data["music_avqa"][1]))
    golds = [item.gold["answer"] for item in items]
    half = [g if i % 2 else "not an answer" for i, g in enumerate(golds)]
    passes = {"complete": golds, "audio-missing": half}
    result = score_grid(music_avqa, items, passes, {}, {"benchmark": "music_avqa"})
    assert result["headline"] == {"complete": 1.0, "audio-missing": 0.5} and result["headline_drop"] == {
        "audio-missing": 0.5}
    drop = result["relative_drop"]["audio-missing"]
    assert drop["overall"] == 0.5 and drop["unparsable"] is None            # 0 unparsable when complete: no ratio
    assert drop == relative_drop(music_avqa.score(items, golds), music_avqa.score(items, half))


def test_train_condition_is_read_from_merge_json(tmp_path):
    assert train_condition(tmp_path) == "complete"                          # no merge.json: a plain checkpoint
    for missing, name in ((None, "complete"), ({"rate": 0.0, "type": "audio"}, "complete"),
                          ({"rate": 0.5, "type": "audio", "fill": "drop"}, "audio-missing at η=0.5"),
                          ({"rate": 0.3, "type": "both", "both_ratio": 0.5, "fill": "placeholder"},
                           "mixed at η=0.3, visual share 0.5, placeholder fill")):
        (tmp_path / "merge.json").write_text(json.dumps({"missing": missing}))
        assert train_condition(tmp_path) == name
