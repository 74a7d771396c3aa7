"""Losses of the training tasks; the models themselves stay loss-free.

Retrieval: :func:`sampled_softmax_loss` (in-batch negatives with logQ correction),
:func:`bce_retrieval_loss` (pointwise) or :func:`pairwise_loss` (BPR, margin), with
negatives the trainer draws (random, hard ones from :func:`hard_negatives`, or a mix),
or :func:`batch_hard_triplet_loss` (the hardest in-batch negative). Ranking:
:func:`multitask_loss`.

Legend: B batch, D embedding dimension, K negatives per row, V items in the table,
P known positives per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from shared.models.rankers import TaskHead

__all__ = [
    "batch_hard_triplet_loss",
    "bce_retrieval_loss",
    "hard_negatives",
    "multitask_loss",
    "pairwise_loss",
    "sampled_softmax_loss",
]


def sampled_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
    item_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

    Row ``b``'s positive is item ``b``; the other items of the batch are its negatives::

        s_bj = <u_b, v_j> / τ − log q_j
        loss = mean_b [ −s_bb + log Σ_j s_bj ]   (j over the row's valid columns)

    ``q_j`` is the probability that item ``j`` lands in a batch (about its share of
    training interactions): popular items appear as negatives more often than
    under uniform sampling, and subtracting ``log q_j`` undoes that bias.

    A column ``j != b`` holding the same item as row ``b``'s positive is not a
    negative and is masked out. Duplicates are found from ``item_ids`` when given,
    otherwise from exactly equal rows of ``item_emb`` (which holds without dropout).

    Args:
        user_emb (Tensor): ``(B, D)``.
        item_emb (Tensor): ``(B, D)``, row ``b`` the positive of user ``b``.
        temperature (float): τ > 0.
        log_q (Tensor | None): ``(B,)`` log sampling probability of each row's item.
        item_ids (Tensor | None): ``(B,)`` ids of the items, to find duplicates.

    Returns:
        Tensor: scalar loss.
    """
    logits = user_emb @ item_emb.T / temperature  # (B, B)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)  # column j loses log q_j
    if item_ids is None:
        item_ids = torch.unique(item_emb.detach(), dim=0, return_inverse=True)[1]  # (B,)
    same = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)  # (B, B)
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)  # (B,)
    return F.cross_entropy(logits, target)


def bce_retrieval_loss(
    user_emb: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Pointwise binary cross-entropy on one positive and ``K`` given negatives per row.

    ``loss = mean over the B·(1+K) pairs of BCE(<u, v>/τ, label)``, label 1 for the
    positive and 0 for each negative.

    Args:
        user_emb (Tensor): ``(B, D)``.
        pos_emb (Tensor): ``(B, D)``.
        neg_emb (Tensor): ``(B, K, D)``.
        temperature (float): τ > 0.

    Returns:
        Tensor: scalar loss.
    """
    pos = (user_emb * pos_emb).sum(dim=-1, keepdim=True)  # (B, 1)
    neg = torch.einsum("bd,bkd->bk", user_emb, neg_emb)  # (B, K)
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 1 + K)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def pairwise_loss(
    user_emb: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    temperature: float,
    kind: str = "bpr",
    margin: float = 0.2,
) -> torch.Tensor:
    """Pairwise ranking losses on one positive and ``K`` given negatives per row.

    With ``d_bk = <u_b, v_b> − <u_b, v_bk>``: BPR (Rendle et al., 2009)
    ``mean −log σ(d_bk / τ)``; ``margin``: the hinge ``mean max(0, m − d_bk)`` on the
    similarity's own scale (cosine for unit vectors).

    Args:
        user_emb (Tensor): ``(B, D)``.
        pos_emb (Tensor): ``(B, D)``.
        neg_emb (Tensor): ``(B, K, D)``.
        temperature (float): τ > 0 (BPR).
        kind (str): ``"bpr"`` or ``"margin"``.
        margin (float): m (``"margin"``).

    Returns:
        Tensor: scalar loss.
    """
    pos = (user_emb * pos_emb).sum(dim=-1, keepdim=True)  # (B, 1)
    neg = torch.einsum("bd,bkd->bk", user_emb, neg_emb)  # (B, K)
    if kind == "bpr":
        return -F.logsigmoid((pos - neg) / temperature).mean()
    return F.relu(margin - (pos - neg)).mean()


def batch_hard_triplet_loss(
    user_emb: torch.Tensor, item_emb: torch.Tensor, item_ids: torch.Tensor, margin: float
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al., 2017) with the users as anchors.

    Row ``b``'s positive is item ``b``; its negative the batch's highest-scoring other
    item (columns holding the same item excluded)::

        loss = mean_b max(0, m + max_{j: item_j ≠ item_b} <u_b, v_j> − <u_b, v_b>)

    Args:
        user_emb (Tensor): ``(B, D)``.
        item_emb (Tensor): ``(B, D)``.
        item_ids (Tensor): ``(B,)`` to find duplicates.
        margin (float): m.

    Returns:
        Tensor: scalar loss (0, with a gradient path, when no row has a negative).
    """
    scores = user_emb @ item_emb.T  # (B, B)
    same = item_ids.unsqueeze(1) == item_ids.unsqueeze(0)  # (B, B), the diagonal included
    hardest = scores.masked_fill(same, float("-inf")).max(dim=1).values  # (B,)
    has = torch.isfinite(hardest)
    if not bool(has.any()):
        return scores.sum() * 0.0
    return F.relu(margin + hardest[has] - scores.diagonal()[has]).mean()


@torch.no_grad()
def hard_negatives(
    user_emb: torch.Tensor,
    item_table_emb: torch.Tensor,
    positives: torch.Tensor,
    k: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """The ``k`` items scoring highest for each user, its known positives excluded.

    Scores are ``<u_b, v_i>`` over the whole item table, computed ``chunk`` users at
    a time so memory stays ``chunk · V`` floats. No gradient flows.

    Args:
        user_emb (Tensor): ``(B, D)``.
        item_table_emb (Tensor): ``(V, D)``, the current item vectors.
        positives (Tensor): ``(B,)`` or ``(B, P)`` int64 rows of the item table to
            exclude; ``-1`` pads a row of ``(B, P)``.
        k (int): negatives per user; at most ``V − P``.

    Returns:
        Tensor: ``(B, k)`` int64 rows of the item table, best first.
    """
    n_items = item_table_emb.shape[0]
    positives = positives.reshape(positives.shape[0], -1)  # (B, P)
    if k > n_items - positives.shape[1]:
        raise ValueError(
            f"k={k} hard negatives need more than {n_items} - {positives.shape[1]} items"
        )
    # Padding points at an extra column V, which is dropped before the top-k.
    index = torch.where(positives >= 0, positives, n_items)  # (B, P)
    out = []
    for start in range(0, user_emb.shape[0], chunk):
        rows = index[start : start + chunk]  # (b, P)
        scores = user_emb[start : start + chunk] @ item_table_emb.T  # (b, V)
        excluded = torch.zeros(rows.shape[0], n_items + 1, dtype=torch.bool, device=scores.device)
        excluded.scatter_(1, rows, True)  # (b, V + 1)
        scores.masked_fill_(excluded[:, :n_items], float("-inf"))
        out.append(scores.topk(k, dim=1).indices)  # (b, k)
    return torch.cat(out) if out else positives.new_zeros(0, k)


def multitask_loss(
    outputs: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    tasks: Sequence[TaskHead],
    weights: Mapping[str, float] | None = None,
    pos_weight: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of per-task losses over the rows where each task is defined.

    Binary tasks: BCE with logits; regression tasks: MSE. A row counts for task ``t``
    when its label is not NaN and, for a child task, its parent's label is 1: the
    child learns ``p(t | parent)`` (conditional training, ESMM-lite), which
    :func:`shared.models.rankers.chain_probabilities` multiplies back by ``p(parent)``.
    A task with no valid row in the batch contributes 0 (with a gradient path).

    Args:
        outputs (Mapping[str, Tensor]): task name -> ``(B,)`` logits or values.
        labels (Mapping[str, Tensor]): task name -> ``(B,)`` float labels, NaN = unknown.
        tasks (Sequence[TaskHead]): the tasks to train.
        weights (Mapping[str, float] | None): task name -> weight (1.0 when absent).
        pos_weight (Mapping[str, float] | None): binary task name -> the weight of its
            positive rows in the BCE (weighted BCE for rare positives; 1.0 when absent).

    Returns:
        tuple[Tensor, dict[str, Tensor]]: the total (scalar, differentiable) and each
        task's mean loss (detached scalars).
    """
    weights = weights or {}
    total = torch.zeros((), device=next(iter(outputs.values())).device)
    per_task: dict[str, torch.Tensor] = {}
    for task in tasks:
        y, target = outputs[task.name], labels[task.name].to(outputs[task.name].dtype)  # (B,), (B,)
        mask = ~torch.isnan(target)  # (B,)
        if task.parent is not None:
            mask &= labels[task.parent] == 1  # NaN == 1 is False
        if not bool(mask.any()):
            loss = y.sum() * 0.0
        elif task.kind == "binary":
            w = (pos_weight or {}).get(task.name)
            loss = F.binary_cross_entropy_with_logits(
                y[mask], target[mask], pos_weight=None if w is None else y.new_tensor(w)
            )
        else:
            loss = F.mse_loss(y[mask], target[mask])
        per_task[task.name] = loss.detach()
        total = total + weights.get(task.name, 1.0) * loss
    return total, per_task
