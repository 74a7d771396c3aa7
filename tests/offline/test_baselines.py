"""``offline.baselines``: the simple models the stack is measured against."""

from __future__ import annotations

import numpy as np

from offline.baselines import EASE_LAMBDA, baseline_scores


def test_baselines_score_what_co_occurs_and_what_is_popular() -> None:
    # items 0 and 1 always come together; item 2 is popular alone; item 3 is rare
    x = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]], float)
    rows, items = np.nonzero(x)
    times = np.arange(len(rows))
    got = baseline_scores(x, rows, times, items, scored=np.array([4]))
    assert set(got) == {"popularity", "recent popularity", "EASE (λ 200)", "item-kNN (100)"}
    assert got["popularity"][0].tolist() == [3, 2, 3, 1]
    # EASE's closed form: B = I − P / diag(P) with a zero diagonal, scores x @ B
    p = np.linalg.inv(x.T @ x + EASE_LAMBDA * np.eye(4))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(got["EASE (λ 200)"], x[[4]] @ b)
    for name in ("EASE (λ 200)", "item-kNN (100)"):  # the user holds item 0: item 1 is next
        scores = got[name][0]
        assert scores[1] > scores[2] and scores[1] > scores[3], name
