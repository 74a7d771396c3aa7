import numpy as np

from offline.training.history import CausalHistory


def test_history_holds_only_earlier_positives_of_the_same_user_most_recent_first() -> None:
    users = np.array([1, 1, 1, 2, 1])
    ts = np.array([10, 20, 30, 5, 30])
    slots = np.array([101, 102, 103, 201, 104])
    history = CausalHistory(users, ts, slots, length=3)
    got = history(np.array([1, 1, 1, 2, 2, 3]), np.array([25, 30, 31, 5, 6, 100]))
    assert got.tolist() == [
        [102, 101, 0],  # before t=25
        [102, 101, 0],  # strictly before 30: neither item at t=30
        [104, 103, 102],  # after both t=30 items (ties kept in input order), truncated to 3
        [0, 0, 0],  # nothing before the user's first positive
        [201, 0, 0],
        [0, 0, 0],  # a user without positives
    ]


def test_around_alternates_nearest_before_and_after_and_skips_same_time_items() -> None:
    users = np.array([1, 1, 1, 1, 1, 1, 2])
    ts = np.array([10, 20, 30, 30, 40, 50, 5])
    slots = np.array([101, 102, 103, 104, 105, 106, 201])
    history = CausalHistory(users, ts, slots, length=4)
    got = history.around(np.array([1, 1, 2, 3]), np.array([30, 50, 5, 7]))
    assert got.tolist() == [
        [102, 105, 101, 106],  # before, after, before − 1, after + 1; both t=30 items left out
        [105, 104, 0, 0],  # the last positive: its two nearest earlier ones, then padding
        [0, 0, 0, 0],  # the user's only positive
        [0, 0, 0, 0],  # a user without positives
    ]
