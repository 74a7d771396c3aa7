import math
from itertools import product

import numpy as np
import pytest

from offline import metrics as m

LOG2_3 = math.log2(3)
LOG2_4 = 2.0


def rel(pairs: list[tuple[int, int]], n_users: int) -> m.RelevantSets:
    users, items = zip(*pairs, strict=True) if pairs else ((), ())
    return m.relevant_sets(np.array(users, dtype=int), np.array(items, dtype=int), n_users)


# --- relevant sets and top-k --------------------------------------------------------
def test_relevant_sets_is_sorted_unique_csr() -> None:
    r = rel([(2, 5), (0, 3), (2, 1), (0, 3)], n_users=4)
    assert r.indptr.tolist() == [0, 1, 1, 3, 3]  # user 1 and 3 have nothing
    assert r.indices.tolist() == [3, 1, 5]
    assert r.counts.tolist() == [1, 0, 2, 0]
    indptr, indices = r  # a plain pair too
    assert indptr is r.indptr and indices is r.indices
    with pytest.raises(ValueError):
        m.relevant_sets(np.array([4]), np.array([0]), n_users=4)


def test_topk_orders_excludes_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    assert m.topk_from_scores(scores, 2).tolist() == [[1, 3], [0, 1]]
    exclude = np.array([[False, True, False, False], [True, True, True, False]])
    # row 1 has only item 3 left: the other slots are padding
    assert m.topk_from_scores(scores, 3, exclude).tolist() == [[3, 2, 0], [3, -1, -1]]
    # k beyond the catalogue pads with -1
    assert m.topk_from_scores(scores, 6)[0].tolist() == [1, 3, 2, 0, -1, -1]


def test_topk_shared_scores_for_popularity() -> None:
    pop = m.popularity_scores(np.array([2, 2, 0, 2, 1, 0]), n_items=4)
    assert pop.tolist() == [2.0, 1.0, 3.0, 0.0]
    seen = np.array([[False, False, True, False], [True, False, False, False]])
    assert m.topk_from_scores(pop, 2, exclude=seen).tolist() == [[0, 1], [2, 1]]
    assert m.topk_from_scores(pop, 2).tolist() == [[2, 0]]


# --- ranking metrics on the hand example --------------------------------------------
def test_hand_example_single_user() -> None:
    # recs [[3, 1, 2]], relevant {1, 4}: one hit, at rank 2.
    recs = np.array([[3, 1, 2]])
    r = rel([(0, 1), (0, 4)], n_users=1)
    assert m.hit_matrix(recs, r).tolist() == [[False, True, False]]
    # recall@3 = 1 hit / |rel| 2
    assert m.recall_at_k(recs, r, 3) == pytest.approx(1 / 2)
    # precision@3 = 1 hit / k 3
    assert m.precision_at_k(recs, r, 3) == pytest.approx(1 / 3)
    # DCG = 1/log2(2+1) (hit at 0-based position 1); IDCG over min(2, 3) = 2 slots
    # = 1/log2(2) + 1/log2(3) = 1 + 1/log2(3)
    assert m.ndcg_at_k(recs, r, 3) == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    # AP@3 = precision at the hit (1/2) / min(|rel| 2, k 3) = (1/2) / 2
    assert m.map_at_k(recs, r, 3) == pytest.approx(0.25)
    # first hit at rank 2
    assert m.mrr(recs, r) == pytest.approx(1 / 2)
    assert m.hit_rate_at_k(recs, r, 3) == 1.0
    # @1 only sees item 3: no hit anywhere
    assert m.recall_at_k(recs, r, 1) == 0.0
    assert m.ndcg_at_k(recs, r, 1) == 0.0
    assert m.hit_rate_at_k(recs, r, 1) == 0.0


def test_hand_example_many_users_and_exclusion() -> None:
    recs = np.array(
        [
            [5, 7, 1, 2],  # user 0, rel {5, 1, 9}: hits at ranks 1, 3
            [0, -1, -1, -1],  # user 1, no relevant items: excluded from every mean
            [4, 6, -1, -1],  # user 2, rel {6}: hit at rank 2, padding after
            [-1, -1, -1, -1],  # user 3, rel {2}: an empty list
        ]
    )
    r = rel([(0, 5), (0, 1), (0, 9), (2, 6), (3, 2)], n_users=4)
    # recall@4: user 0 = 2/3, user 2 = 1/1, user 3 = 0/1 → (2/3 + 1 + 0) / 3
    assert m.recall_at_k(recs, r, 4) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # precision@4: 2/4, 1/4, 0/4
    assert m.precision_at_k(recs, r, 4) == pytest.approx((0.5 + 0.25 + 0) / 3)
    # ndcg@4: user 0 DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG over min(3, 4) = 3 slots
    #         = 1 + 1/log2(3) + 1/2; user 2 = (1/log2(3)) / 1; user 3 = 0
    ndcg0 = 1.5 / (1 + 1 / LOG2_3 + 0.5)
    assert m.ndcg_at_k(recs, r, 4) == pytest.approx((ndcg0 + 1 / LOG2_3 + 0) / 3)
    # AP@4: user 0 = (1/1 + 2/3) / min(3, 4) = (5/3)/3; user 2 = (1/2) / 1; user 3 = 0
    assert m.map_at_k(recs, r, 4) == pytest.approx((5 / 9 + 0.5 + 0) / 3)
    # MRR: 1/1, 1/2, 0
    assert m.mrr(recs, r) == pytest.approx((1 + 0.5 + 0) / 3)
    assert m.hit_rate_at_k(recs, r, 4) == pytest.approx(2 / 3)
    # AP@2 for user 0 is normalised by min(3, 2) = 2: (1/1) / 2; user 2: (1/2) / 1
    assert m.map_at_k(recs, r, 2) == pytest.approx((0.5 + 0.5 + 0) / 3)
    report = m.ranking_report(recs, r, ks=(2, 4))
    single = {
        "recall": m.recall_at_k,
        "precision": m.precision_at_k,
        "ndcg": m.ndcg_at_k,
        "map": m.map_at_k,
        "hitrate": m.hit_rate_at_k,
    }
    expected = {f"{n}@{k}": f(recs, r, k) for k in (2, 4) for n, f in single.items()}
    expected |= {"mrr": m.mrr(recs, r), "n_users": 3.0}
    assert report == pytest.approx(expected)


def test_padding_never_hits() -> None:
    # Item index -1 is never relevant, even where the key arithmetic wraps to the
    # previous user's last item (user 0 holds item 9 = M - 1 with M = 10).
    recs = np.array([[-1, -1], [-1, 9]])
    r = rel([(0, 9), (1, 9)], n_users=2)
    assert m.hit_matrix(recs, r).tolist() == [[False, False], [False, True]]
    assert m.recall_at_k(recs, r, 2) == pytest.approx(0.5)


def test_repeated_item_counts_once() -> None:
    recs = np.array([[1, 1, 1]])
    r = rel([(0, 1), (0, 2)], n_users=1)
    assert m.hit_matrix(recs, r).tolist() == [[True, False, False]]
    assert m.recall_at_k(recs, r, 3) == pytest.approx(0.5)


def test_no_relevant_users_gives_nan() -> None:
    recs = np.array([[0, 1]])
    r = rel([], n_users=1)
    assert math.isnan(m.recall_at_k(recs, r, 2))
    assert math.isnan(m.mrr(recs, r))


def test_short_list_and_mismatched_rows() -> None:
    recs = np.array([[2]])
    r = rel([(0, 2)], n_users=1)
    # k larger than the list: precision still divides by k, ndcg is perfect
    assert m.precision_at_k(recs, r, 10) == pytest.approx(0.1)
    assert m.ndcg_at_k(recs, r, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        m.recall_at_k(np.array([[2], [3]]), r, 1)


def test_metrics_match_per_user_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 40, 30, 8
    scores = rng.normal(size=(n_users, n_items))
    recs = m.topk_from_scores(scores, k)
    pairs = rng.integers(0, [n_users, n_items], size=(120, 2))
    r = m.relevant_sets(pairs[:, 0], pairs[:, 1], n_users)
    recalls, ndcgs, aps = [], [], []
    for u in range(n_users):  # the slow, obvious definition
        rel_u = set(r.indices[r.indptr[u] : r.indptr[u + 1]].tolist())
        if not rel_u:
            continue
        hit = [int(i in rel_u) for i in recs[u]]
        recalls.append(sum(hit) / len(rel_u))
        ideal = sum(1 / math.log2(j + 2) for j in range(min(len(rel_u), k)))
        ndcgs.append(sum(h / math.log2(j + 2) for j, h in enumerate(hit)) / ideal)
        prec = np.cumsum(hit) / np.arange(1, k + 1)
        aps.append(float((prec * hit).sum()) / min(len(rel_u), k))
    assert m.recall_at_k(recs, r, k) == pytest.approx(np.mean(recalls))
    assert m.ndcg_at_k(recs, r, k) == pytest.approx(np.mean(ndcgs))
    assert m.map_at_k(recs, r, k) == pytest.approx(np.mean(aps))


# --- beyond accuracy ----------------------------------------------------------------
def test_catalog_coverage() -> None:
    # distinct {0, 2, 3} out of 10; -1 ignored
    assert m.catalog_coverage(np.array([[0, 2, -1], [2, 3, 0]]), 10) == pytest.approx(0.3)


def test_intra_list_diversity() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    recs = np.array(
        [
            [0, 1, -1],  # cos(0,1) = 0 → 1 - 0 = 1
            [0, 2, 3],  # cos: (0,2) = 1/√2, (0,3) = -1, (2,3) = -1/√2
            [2, -1, -1],  # one item: skipped
        ]
    )
    # list 1: mean of (1 - 1/√2) + (1 + 1) + (1 + 1/√2) over 3 pairs = 4/3
    assert m.intra_list_diversity(recs, vecs) == pytest.approx((1 + 4 / 3) / 2)
    assert m.intra_list_diversity(recs, vecs, batch_size=1) == pytest.approx((1 + 4 / 3) / 2)
    assert math.isnan(m.intra_list_diversity(np.array([[1, -1]]), vecs))


# --- pointwise metrics --------------------------------------------------------------
def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)]
    return float(np.mean(wins))


def test_auc_with_ties_matches_all_pairs() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.8, 0.8, 0.3, 0.3, 0.1, 0.5, 0.5])
    # pairs: 12 in all; ties at 0.8, 0.3, 0.5 each count 1/2
    assert m.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=200)
    scores = rng.integers(0, 6, size=200).astype(float)  # heavy ties
    assert m.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_auc_extremes_and_empty_class() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    assert m.auc(labels, scores) == 1.0
    assert m.auc(labels, -scores) == 0.0
    assert m.auc(labels, np.zeros(4)) == 0.5
    assert math.isnan(m.auc(np.ones(3), np.arange(3.0)))


def test_logloss_and_rmse() -> None:
    # -(log 0.8 + log(1 - 0.4)) / 2
    assert m.logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(
        -(math.log(0.8) + math.log(0.6)) / 2
    )
    # p = 0 for a positive is clipped to eps
    assert m.logloss(np.array([1]), np.array([0.0]), eps=1e-7) == pytest.approx(-math.log(1e-7))
    # sqrt((1 + 4 + 0) / 3)
    assert m.rmse(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 3.0])) == pytest.approx(
        math.sqrt(5 / 3)
    )


def test_graded_ndcg_weighs_hits_by_their_grade() -> None:
    recs = np.array([[5, 3, 7], [1, 2, 4]])
    users = np.array([0, 0, 1, 1, 1])
    items = np.array([3, 5, 9, 2, 2])
    grades = np.array([2.0, 5.0, 4.0, 1.0, 3.0])  # (1, 2) twice: its best grade counts
    d = 1 / np.log2(np.arange(3) + 2)
    u0 = (31 * d[0] + 3 * d[1]) / (31 * d[0] + 3 * d[1])  # ideal order already
    u1 = (7 * d[1]) / (15 * d[0] + 7 * d[1])
    assert m.graded_ndcg_at_k(recs, users, items, grades, 3) == pytest.approx((u0 + u1) / 2)
    swapped = np.array([[3, 5, 7], [1, 2, 4]])
    u0s = (3 * d[0] + 31 * d[1]) / (31 * d[0] + 3 * d[1])
    assert m.graded_ndcg_at_k(swapped, users, items, grades, 3) == pytest.approx((u0s + u1) / 2)


def test_graded_ndcg_of_the_test_split_is_one_in_the_ideal_order(ml100k_dir) -> None:
    import polars as pl  # noqa: PLC0415

    from offline import etl  # noqa: PLC0415
    from offline.datasets import load_dataset  # noqa: PLC0415
    from offline.evaluate import _graded_ndcg, held_out  # noqa: PLC0415
    from shared.features import FeatureTables  # noqa: PLC0415

    r = etl.run(load_dataset("movielens-100k", ml100k_dir), etl.EtlConfig())
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    test = held_out(tables, r.interactions, r.spec, "test")
    rows = r.interactions.filter(pl.col("split") == "test").sort(
        ["user_idx", "rating", "item_idx"], descending=[False, True, False]
    )
    lists = rows.group_by("user_idx", maintain_order=True).agg(pl.col("item_idx").head(10))
    ideal = np.zeros((len(test.users), 10), dtype=np.int64)
    for u, items in zip(lists["user_idx"], lists["item_idx"], strict=True):
        row = np.searchsorted(test.users, u)
        ideal[row, : len(items)] = items
    worst = ideal[:, ::-1]
    got = _graded_ndcg(r.interactions, r.spec, test, {"ideal": ideal, "reversed": worst})
    assert got["ideal"] == pytest.approx(1.0)
    assert 0 < got["reversed"] < got["ideal"]


def test_category_hits_count_values_shared_with_the_users_earlier_items() -> None:
    from offline.evaluate import _hit_share  # noqa: PLC0415

    # items' values (padded lists): 1 → {5}, 2 → {6, 7}, 3 → {5, 7}
    slots = np.array([[0, 0], [5, 0], [6, 7], [5, 7]])
    earlier = (np.array([0, 1]), np.array([1, 2]))  # user 0 met item 1, user 1 item 2
    # user 0: item 2 shares nothing, item 3 shares 5; user 1: items 3 (7) and 2 (6, 7)
    rows = np.array([[2, 3], [3, 2]])
    assert _hit_share(slots, earlier, np.array([[0], [1]]), rows) == 0.75
    assert _hit_share(slots, earlier, np.array([[0]]), np.array([[1]])) == 1.0
