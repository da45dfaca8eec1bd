"""The Embedder: loading the SavedModel and checking chip shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.pipeline.embed import Embedder


def test_embedder_checks_chip_shapes(default_model_dir: Path) -> None:
    embedder = Embedder(default_model_dir)
    with pytest.raises(ValueError, match=r"Chips must have shape \[N, 150, 150, 3\]"):
        embedder.embed(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    assert embedder.embed(np.zeros((0, 150, 150, 3), dtype=np.uint8)).shape == (0, 128)
    single = embedder.embed(np.full((150, 150, 3), 100, dtype=np.uint8))
    assert single.shape == (1, 128)
