"""Losses of the training tasks, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offline.training.losses import (
    batch_hard_triplet_loss,
    bce_retrieval_loss,
    hard_negatives,
    multitask_loss,
    pairwise_loss,
    sampled_softmax_loss,
)
from shared.models.rankers import TaskHead, build_ranker

NAN = float("nan")


def softmax_ce(logits: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[diagonal], in plain Python."""
    total = 0.0
    for b, row in enumerate(logits):
        total += -row[b] + math.log(sum(math.exp(x) for x in row if x != -math.inf))
    return total / len(logits)


def example() -> tuple[torch.Tensor, torch.Tensor]:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    item = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    return user, item


def dots(user: torch.Tensor, item: torch.Tensor, tau: float) -> list[list[float]]:
    return [
        [float(sum(u * v for u, v in zip(ur, vr, strict=True))) / tau for vr in item.tolist()]
        for ur in user.tolist()
    ]


def test_sampled_softmax_equals_hand_computed_cross_entropy() -> None:
    user, item = example()
    expected = softmax_ce(dots(user, item, 0.5))
    loss = sampled_softmax_loss(user, item, temperature=0.5, log_q=None)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_log_q_correction_subtracts_log_q_of_each_column() -> None:
    user, item = example()
    q = [0.1, 0.1, 0.8]  # item 2 is popular
    logits = [[s - math.log(q[j]) for j, s in enumerate(row)] for row in dots(user, item, 0.5)]
    loss = sampled_softmax_loss(user, item, 0.5, log_q=torch.tensor(q).log())
    assert loss.item() == pytest.approx(softmax_ce(logits), rel=1e-6)
    # A constant log q shifts every logit of a row alike: the softmax does not change.
    same = sampled_softmax_loss(user, item, 0.5, log_q=torch.full((3,), -2.0))
    assert same.item() == pytest.approx(
        sampled_softmax_loss(user, item, 0.5, None).item(), rel=1e-6
    )


def test_log_q_correction_lowers_the_penalty_on_popular_negatives() -> None:
    # With one-hot items, d loss / d u_0[j] = (p_0j - [j == 0]) / (B τ): user 0 is pushed
    # away from item 2 (a negative of row 0) in proportion to p_02.
    item = torch.eye(3)
    push = []
    for log_q in (None, torch.tensor([0.1, 0.1, 0.8]).log()):
        user = torch.tensor([[0.5, 0.1, 0.4], [0.1, 0.5, 0.2], [0.3, 0.3, 0.9]], requires_grad=True)
        sampled_softmax_loss(user, item, 1.0, log_q).backward()
        push.append(user.grad[0, 2].item())
    assert 0 < push[1] < push[0]


def test_duplicate_positives_are_not_negatives() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    item = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.8, 0.6]])  # rows 0 and 2: the same item
    logits = dots(user, item, 0.5)
    logits[0][2] = logits[2][0] = -math.inf
    expected = softmax_ce(logits)
    by_id = sampled_softmax_loss(user, item, 0.5, None, item_ids=torch.tensor([7, 3, 7]))
    by_row = sampled_softmax_loss(user, item, 0.5, None)
    assert by_id.item() == pytest.approx(expected, rel=1e-6)
    assert by_row.item() == pytest.approx(expected, rel=1e-6)


def test_bce_retrieval_loss_equals_hand_computed() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    neg = torch.tensor([[[1.0, 0.0], [0.0, -1.0]], [[0.8, 0.6], [0.6, 0.8]]])  # (B=2, K=2, D)

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    tau = 0.5
    terms = [bce(0.6 / tau, 1), bce(1.0 / tau, 0), bce(0.0 / tau, 0)]
    terms += [bce(1.0 / tau, 1), bce(0.6 / tau, 0), bce(0.8 / tau, 0)]
    loss = bce_retrieval_loss(user, pos, neg, tau)
    assert loss.item() == pytest.approx(sum(terms) / 6, rel=1e-6)


def test_hard_negatives_pick_top_scoring_non_positives() -> None:
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0], [-1.0, -0.5]])
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negs = hard_negatives(user, table, torch.tensor([0, 3]), k=2)
    assert negs.tolist() == [[1, 2], [2, 1]]
    several = torch.tensor([[0, 1], [3, -1]])  # -1 pads user 1's positives
    assert hard_negatives(user, table, several, k=2).tolist() == [[2, 3], [2, 1]]
    assert hard_negatives(user, table, several, k=3).tolist() == [[2, 3, 4], [2, 1, 0]]
    assert torch.equal(
        hard_negatives(user, table, several, k=3, chunk=1),
        hard_negatives(user, table, several, k=3),
    )
    with pytest.raises(ValueError, match="hard negatives"):
        hard_negatives(user, table, several, k=4)


TASKS = (
    TaskHead(name="click"),
    TaskHead(name="purchase", parent="click"),
    TaskHead(name="rating", kind="regression"),
)


def test_multitask_loss_masks_children_of_negative_parents_and_nan_labels() -> None:
    outputs = {
        "click": torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True),
        "purchase": torch.tensor([1.0, 3.0, -2.0, 4.0], requires_grad=True),
        "rating": torch.tensor([3.0, 4.0, 5.0, 1.0], requires_grad=True),
    }
    labels = {
        "click": torch.tensor([1.0, 0.0, 1.0, NAN]),
        "purchase": torch.tensor(
            [1.0, 1.0, 0.0, 1.0]
        ),  # rows 1 (click 0) and 3 (click NaN) do not count
        "rating": torch.tensor([4.0, NAN, 5.0, 3.0]),
    }
    total, per_task = multitask_loss(outputs, labels, TASKS, {"purchase": 2.0})

    def bce(x: float, y: float) -> float:
        return math.log1p(math.exp(-x)) if y == 1 else math.log1p(math.exp(x))

    click = (bce(0.5, 1) + bce(-1.0, 0) + bce(2.0, 1)) / 3
    purchase = (bce(1.0, 1) + bce(-2.0, 0)) / 2
    rating = ((3 - 4) ** 2 + 0 + (1 - 3) ** 2) / 3
    assert per_task["click"].item() == pytest.approx(click, rel=1e-6)
    assert per_task["purchase"].item() == pytest.approx(purchase, rel=1e-6)
    assert per_task["rating"].item() == pytest.approx(rating, rel=1e-6)
    assert total.item() == pytest.approx(click + 2 * purchase + rating, rel=1e-6)
    assert not any(v.requires_grad for v in per_task.values())
    total.backward()
    assert outputs["purchase"].grad[1] == 0 and outputs["purchase"].grad[3] == 0
    assert outputs["rating"].grad[1] == 0 and outputs["click"].grad[3] == 0


def test_pos_weight_weighs_the_positive_rows_of_a_binary_task() -> None:
    outputs = {t.name: torch.tensor([0.5, -1.0, 2.0]) for t in TASKS}
    labels = {"click": torch.tensor([1.0, 0.0, 1.0]), "purchase": torch.full((3,), NAN),
              "rating": torch.full((3,), NAN)}  # fmt: skip
    _, plain = multitask_loss(outputs, labels, TASKS)
    _, weighted = multitask_loss(outputs, labels, TASKS, pos_weight={"click": 3.0})

    def bce(x: float, y: float) -> float:
        return math.log1p(math.exp(-x)) if y == 1 else math.log1p(math.exp(x))

    want = (3 * bce(0.5, 1) + bce(-1.0, 0) + 3 * bce(2.0, 1)) / 3
    assert weighted["click"].item() == pytest.approx(want, rel=1e-6)
    assert plain["click"].item() == pytest.approx(
        (bce(0.5, 1) + bce(-1.0, 0) + bce(2.0, 1)) / 3, rel=1e-6
    )


def test_multitask_loss_of_a_task_without_valid_rows_is_zero() -> None:
    outputs = {t.name: torch.randn(3, requires_grad=True) for t in TASKS}
    labels = {"click": torch.zeros(3), "purchase": torch.ones(3), "rating": torch.full((3,), NAN)}
    total, per_task = multitask_loss(outputs, labels, TASKS)
    assert per_task["purchase"].item() == 0 and per_task["rating"].item() == 0
    assert torch.isfinite(total)
    total.backward()
    assert outputs["purchase"].grad is not None and not outputs["purchase"].grad.any()


def test_fit_without_validation_trains_every_epoch_and_keeps_the_last_weights() -> None:
    from offline.training.loop import TrainerConfig, fit  # noqa: PLC0415

    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)

    def loss_fn(net: torch.nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
        return torch.nn.functional.mse_loss(net(x[batch]), y[batch])

    history = fit(model, TrainerConfig(epochs=3, batch_size=16, patience=1), 64, loss_fn, None, "t")
    assert len(history.epochs) == 3 and history.best_epoch == 3
    last = torch.nn.functional.mse_loss(model(x), y).item()
    assert last < history.epochs[0]["train_loss"]


def test_mixup_mixes_field_embeddings_and_losses_in_training_only() -> None:
    from offline.training.ranking import RankerTrainTask  # noqa: PLC0415
    from tests.shared.test_models import ranker_config, ranker_inputs  # noqa: PLC0415

    torch.manual_seed(0)
    model = build_ranker("dcn", ranker_config())
    inputs = ranker_inputs()
    labels = {"click": (inputs.cat[:, 0] % 2).float(), "cart": torch.ones(6),
              "purchase": torch.zeros(6), "rating": inputs.dense[:, 0]}  # fmt: skip
    plain, mixed = RankerTrainTask(model, {}), RankerTrainTask(model, {}, mixup_alpha=0.4)
    mixed.eval()
    assert torch.equal(mixed(inputs, labels), plain(inputs, labels))
    mixed.train()
    losses = {mixed(inputs, labels).item() for _ in range(5)}
    assert len(losses) == 5 and all(np.isfinite(list(losses)))
    mixed(inputs, labels).backward()
    assert model.sparse_arch.embedding.weight.grad is not None


def test_pairwise_and_triplet_losses_reward_the_positive_above_the_negatives() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good, bad = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    for kind in ("bpr", "margin"):
        right = pairwise_loss(u, good, bad[:, None], 0.1, kind, 0.5)
        wrong = pairwise_loss(u, bad, good[:, None], 0.1, kind, 0.5)
        assert right < wrong
    assert pairwise_loss(u, good, bad[:, None], 0.1, "margin", 0.5) == 0.0  # beyond the margin
    ids = torch.tensor([3, 4])
    assert batch_hard_triplet_loss(u, good, ids, 0.5) == 0.0
    assert batch_hard_triplet_loss(u, bad, ids, 0.5) == pytest.approx(1.5)  # 0.5 + 1 − 0
    # the same item in both rows: no negative, no loss, still a gradient path
    same = batch_hard_triplet_loss(u.requires_grad_(), good, torch.tensor([3, 3]), 0.5)
    same.backward()
    assert same == 0.0 and u.grad is not None
