"""``offline.baselines``: the simple models the stack is measured against."""

from __future__ import annotations

import numpy as np

from offline import baselines
from offline.baselines import EASE_LAMBDA, baseline_lists


def _log() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # items 0 and 1 always come together; item 2 is popular alone; item 3 is rare
    x = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]], float)
    rows, items = np.nonzero(x)
    return x, rows, items, np.arange(len(rows))


def test_baselines_rank_what_co_occurs_and_what_is_popular() -> None:
    x, rows, items, times = _log()
    got = baseline_lists(rows, items, times, x.shape, scored=np.array([4, 2]), k=4)
    assert set(got) == {"popularity", "recent popularity", "EASE (λ 200)", "item-kNN (100)"}
    # counts [3, 2, 3, 1]; each user's own items never come back (-1 pads the rest)
    assert got["popularity"].tolist() == [[2, 1, 3, -1], [0, 1, 3, -1]]
    # EASE's closed form: B = I − P / diag(P) with a zero diagonal, scores x @ B
    p = np.linalg.inv(x.T @ x + EASE_LAMBDA * np.eye(4))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    scores = np.where(x[[4]] > 0, -np.inf, x[[4]] @ b)[0]
    assert got["EASE (λ 200)"][0, :3].tolist() == np.argsort(-scores, kind="stable")[:3].tolist()
    for name in ("EASE (λ 200)", "item-kNN (100)"):  # the user holds item 0: item 1 is next
        assert got[name][0, 0] == 1, name


def test_blocks_of_users_and_never_read_columns_change_nothing(monkeypatch) -> None:  # noqa: ANN001
    x, rows, items, times = _log()
    scored = np.arange(5)
    whole = baseline_lists(rows, items, times, x.shape, scored, k=3, never=(3,))
    monkeypatch.setattr(baselines, "SCORE_BLOCK", 4)  # one user per block
    blocked = baseline_lists(rows, items, times, x.shape, scored, k=3, never=(3,))
    for name, recs in whole.items():
        np.testing.assert_array_equal(blocked[name], recs, err_msg=name)
        assert not (recs == 3).any(), name
