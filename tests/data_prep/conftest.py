from pathlib import Path

import pytest

from data_prep.synthetic import generate

N = 8  # train items per source (test split: 4)


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> dict[str, Path]:
    """The synthetic raw datasets, generated once per session."""
    return generate(tmp_path_factory.mktemp("raw"), n=N, seed=0)
