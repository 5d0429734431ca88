"""lmms-eval integration (`pip install -e ".[lmms-eval]"`): the `avtrain` model for merged checkpoints, registered
through lmms-eval's entry-point group `lmms_eval.models` (pyproject.toml), and task configs under `tasks/`."""

from __future__ import annotations

MODEL_ID = "avtrain"


def manifest():
    """The entry point lmms-eval loads: which class serves `--model avtrain`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="pipeline.eval.lmms.model.AVTrainLMM")
