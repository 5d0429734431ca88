"""Experiment trackers (`train.report_to`): config, metrics and loss curve reach TensorBoard, W&B (offline) and MLflow
(a local file store), read back from each one's own files; a resumed run continues the same tracker run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pipeline.rundir import RunDir
from pipeline.train.logging import MetricsLogger
from pipeline.train.trackers import check_report_to

CONFIG = {"stage": 2, "model": {"llm": "/models/llm"}, "optim": {"lr": 0.001}}


def _steps(first: int, last: int) -> list[dict]:
    return [
        {"step": s, "loss": 2.0 / s, "lr": 1e-3, "samples_per_s": 4.0, "tokens_per_s": 100.0, "epoch": 0}
        for s in range(first, last + 1)
    ]


def _log(root: Path, report_to: list[str], steps: list[dict], start: int = 0) -> RunDir:
    root.mkdir(exist_ok=True)
    run_dir = RunDir(root)
    log = MetricsLogger(run_dir, total_steps=steps[-1]["step"], start_step=start, enabled=True, report_to=report_to,
                        config=CONFIG)
    for metrics in steps:
        log.log(metrics)
    log.close()
    return run_dir


def test_tensorboard_holds_config_metrics_and_loss_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _log(tmp_path / "run", ["tensorboard"], _steps(1, 3))
    events = EventAccumulator(str(run_dir.tensorboard), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "llm: /models/llm" in text
    image = events.Images("loss_curve")[0]
    assert image.width == 600 and image.height == 350  # loss.png, 6 x 3.5 in at 100 dpi


def _wandb_records(path: Path) -> list:
    """The protobuf records of a `.wandb` file: a 7-byte W&B header, then a LevelDB log (32 KiB blocks of
    [crc32, length, type] chunks; type 1 a whole record, 2/3/4 its first, middle and last parts)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def test_wandb_offline_run_holds_config_metrics_and_loss_curve(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = _log(tmp_path / "run", ["wandb"], _steps(1, 3))
    (log_file,) = (run_dir.root / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(log_file)
    rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    losses = [(row["train/step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert losses == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    (curve,) = [row["loss_curve/path"] for row in rows if row.get("loss_curve/_type") == "image-file"]
    assert (log_file.parent / "files" / curve).is_file()
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "run"
              for i in r.run.config.update}
    assert config["model"] == {"llm": "/models/llm"}
    assert json.loads(run_dir.trackers.read_text())["wandb"] == log_file.stem.removeprefix("run-")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    return mlflow.tracking.MlflowClient()


def test_mlflow_file_store_holds_config_metrics_and_loss_curve(tmp_path, mlflow_store):
    run_dir = _log(tmp_path / "run", ["mlflow"], _steps(1, 3))
    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("trackers-test").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["model.llm"] == "/models/llm" and run.data.params["optim.lr"] == "0.001"
    history = mlflow_store.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    assert {a.path for a in mlflow_store.list_artifacts(run.info.run_id)} == {"config.yaml", "loss.png"}
    assert json.loads(run_dir.trackers.read_text()) == {"mlflow": run.info.run_id}


def test_resumed_run_continues_the_same_tracker_run(tmp_path, mlflow_store):
    _log(tmp_path / "run", ["mlflow", "tensorboard"], _steps(1, 2))
    _log(tmp_path / "run", ["mlflow", "tensorboard"], _steps(3, 4), start=2)
    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("trackers-test").experiment_id])
    assert [m.step for m in mlflow_store.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        (["comet"], "train.report_to: 'comet' is not one of tensorboard, wandb, mlflow"),
        (["tensorboard", "tensorboard"], "train.report_to: 'tensorboard' is listed twice"),
    ],
)
def test_report_to_names_the_bad_entry(report_to, message):
    with pytest.raises(ValueError, match=message):
        check_report_to(report_to)


def test_report_to_names_the_extra_of_a_missing_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ValueError, match=r"'wandb' needs the wandb package: pip install -e '\.\[wandb\]'"):
        check_report_to(["tensorboard", "wandb"])


@pytest.mark.slow
def test_two_rank_run_reports_once_to_each_tracker(train_data, tmp_path, monkeypatch, mlflow_store):
    pytest.importorskip("wandb")
    from tests.train.conftest import REPO, common_overrides, metrics, run_train

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "stage1"
    overrides = common_overrides(train_data, out, max_steps=2, **{"train.report_to": "tensorboard,wandb,mlflow"})
    run_dir = run_train(REPO / "configs/demo/stage1.yaml", overrides)
    losses = [(row["step"], row["loss"]) for row in metrics(run_dir)]
    assert [step for step, _ in losses] == [1, 2]
    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("trackers-test").experiment_id])
    history = mlflow_store.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in losses]
    assert run.data.params["stage"] == "1"
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1  # rank 0 only
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1


def test_launch_refuses_an_unknown_tracker_in_one_line(capsys, train_data, tmp_path):
    from tests.train.conftest import REPO, common_overrides
    from tests.train.test_launch_errors import fails_with

    args = common_overrides(train_data, tmp_path / "run", **{"train.report_to": "[tensorboard, neptune]"})
    fails_with(capsys, ["--config", str(REPO / "configs/demo/stage1.yaml"), *args],
               "train.report_to: 'neptune' is not one of tensorboard, wandb, mlflow")
    assert not (tmp_path / "run").exists()
