"""Adapter tests run single-threaded: stable timings and no oversubscription next to the 2-rank test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
