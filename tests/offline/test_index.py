from pathlib import Path

import faiss
import numpy as np
import pytest

from offline.index import IndexConfig, build_index
from shared.recall import nearest


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_recall_against_exact_meets_the_floor(kind: str) -> None:
    x = _clustered(5000)
    config = IndexConfig(kind=kind, recall_k=50)
    _, quality = build_index(x, config, _clustered(200, seed=1))
    assert quality["recall_vs_exact"] >= config.recall_floor
    assert quality["k"] == 50 and quality["items"] == 5000
    if kind == "flat":
        assert quality["recall_vs_exact"] == 1.0


def test_auto_is_exact_up_to_the_threshold_then_the_fastest_index_above_the_floor(
    tmp_path: Path,
) -> None:
    x, queries = _clustered(3000), _clustered(200, seed=1)
    index, quality = build_index(x, IndexConfig(exact_max_items=3000, recall_k=20), queries)
    assert type(index).__name__ == "IndexFlatIP" and "tried" not in quality
    config = IndexConfig(exact_max_items=1000, recall_k=20, auto_nprobe=(1, 4, 64))
    index, quality = build_index(x, config, queries)
    tried = quality["tried"]
    assert {t["type"] for t in tried} == {"IndexHNSWFlat", "IndexIVFFlat"} and len(tried) == 6
    good = [t for t in tried if t["recall_vs_exact"] >= config.recall_floor]
    assert good and len(good) < len(tried)  # one probe of 55 lists misses neighbours
    best = max(good, key=lambda t: t["index_qps"])
    assert (quality["type"], quality["depth"]) == (best["type"], best["depth"])
    assert type(index).__name__ == best["type"]
    path = tmp_path / "items.faiss"  # the served index searches at that depth
    faiss.write_index(index, str(path))
    served = faiss.read_index(str(path))
    depth = served.nprobe if isinstance(served, faiss.IndexIVF) else served.hnsw.efSearch
    assert depth == best["depth"]
    assert nearest(served, queries, 20).shape == (200, 20)


def test_nearest_gives_item_rows_and_never_more_than_the_catalog() -> None:
    x = _clustered(5)
    index, _ = build_index(x, IndexConfig(kind="hnsw"), x)
    rows = nearest(index, _clustered(2, seed=3), 50)
    assert rows.shape == (2, 5) and (rows <= 5).all() and (rows >= 0).all()
