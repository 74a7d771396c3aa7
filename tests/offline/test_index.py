import numpy as np
import pytest

from offline.index import IndexConfig, build_index, index_quality
from shared.recall import nearest


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_recall_against_exact_meets_the_floor(kind: str) -> None:
    x = _clustered(5000)
    config = IndexConfig(kind=kind)
    quality = index_quality(build_index(x, config), x, _clustered(200, seed=1), k=50)
    assert quality["recall_vs_exact"] >= config.recall_floor
    if kind == "flat":
        assert quality["recall_vs_exact"] == 1.0


def test_auto_switches_to_approximate_above_the_threshold() -> None:
    x = _clustered(300)
    assert type(build_index(x, IndexConfig(exact_max_items=1000))).__name__ == "IndexFlatIP"
    assert type(build_index(x, IndexConfig(exact_max_items=100))).__name__ == "IndexHNSWFlat"


def test_nearest_gives_item_rows_and_never_more_than_the_catalog() -> None:
    index = build_index(_clustered(5), IndexConfig(kind="hnsw"))
    rows = nearest(index, _clustered(2, seed=3), 50)
    assert rows.shape == (2, 5) and (rows <= 5).all() and (rows >= 0).all()
