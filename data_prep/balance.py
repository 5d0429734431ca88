"""Balanced draws for the synthetic datasets: every level equally often, so answers carry no text-only prior."""

from __future__ import annotations

import numpy as np


def balanced(levels: tuple, n: int, rng: np.random.Generator) -> list:
    """n draws with every level equally often (up to one), in random order."""
    values = [levels[i % len(levels)] for i in range(n)]
    return [values[i] for i in rng.permutation(n)]
