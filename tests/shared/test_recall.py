"""``shared.recall``: seen items, FAISS ids and the one merge policy of recall lists."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from shared.recall import SeenItems, faiss_rows, merge


def test_seen_csr_from_pairs() -> None:
    seen = SeenItems.build(np.array([2, 1, 2, 2]), np.array([5, 3, 1, 5]), n_users=4, n_items=6)
    assert seen.of(0).tolist() == [] and seen.of(1).tolist() == [3]
    assert seen.of(2).tolist() == [1, 5] and seen.of(3).tolist() == []
    assert seen.most() == 2


def test_seen_membership_is_per_user() -> None:
    seen = SeenItems.build(np.array([1, 1, 2]), np.array([3, 4, 3]), n_users=4, n_items=6)
    got = seen.contains(np.array([1, 2, 3]), np.array([[3, 4, 5], [3, 4, 0], [3, 1, 2]]))
    assert got.tolist() == [[True, True, False], [True, False, False], [False, False, False]]
    empty = SeenItems.build(np.array([], int), np.array([], int), n_users=2, n_items=3)
    assert not empty.contains(np.array([1]), np.array([[1, 2]])).any()


def test_faiss_ids_are_item_rows_shifted_by_one() -> None:
    assert faiss_rows(np.array([[0, 4, -1]])).tolist() == [[1, 5, 0]]


def test_merge_interleaves_dedupes_bans_and_pads() -> None:
    model = np.array([[11, 12, 13, 14, 0], [21, 22, 90, 23, 24]])
    hot = np.array([90, 91, 12])
    banned = np.zeros((2, 8), dtype=bool)
    banned[1, 6] = True  # user 1 has seen hot item 91
    out = merge(model, hot, k=8, hot_every=2, banned=banned)
    # user 0: M M H M M H … ; 0 dropped; hot 12 already in the model's list
    assert out[0].tolist() == [11, 12, 90, 13, 14, 91, 0, 0]
    # user 1: 90 at model rank 3 comes before its hot copy; banned 91 never appears
    assert out[1].tolist() == [21, 22, 90, 23, 24, 12, 0, 0]


def test_merge_truncates_to_k() -> None:
    out = merge(np.arange(1, 101)[None, :], np.array([500, 501]), k=10, hot_every=4)
    assert out.tolist() == [[1, 2, 3, 4, 500, 5, 6, 7, 8, 501]]


@given(
    model=st.lists(st.integers(-1, 30), max_size=40),
    exclude=st.lists(st.integers(1, 30), max_size=15, unique=True),
    n=st.integers(1, 40),
)
def test_merge_without_interleaving_pads_from_hot(
    model: list[int], exclude: list[int], n: int
) -> None:
    hot = np.arange(30, 0, -1)  # every item 1..30, "hottest" first
    row = np.asarray(model, dtype=np.int64).reshape(1, -1)
    banned = np.isin(np.concatenate([row[0], hot]), exclude)[None]
    out = merge(row, hot, n, 0, banned)[0]
    out = out[out > 0].tolist()
    usable = 30 - len(exclude)
    assert len(out) == min(n, usable)  # padded from the hot list as far as it goes
    assert len(set(out)) == len(out)
    assert not set(out) & set(exclude)
    # the model list's usable ids come first, in their first-seen order
    firsts = list(dict.fromkeys(p for p in model if p >= 1 and p not in exclude))
    assert out[: len(firsts)] == firsts[: len(out)]
