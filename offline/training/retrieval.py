"""Training task of the two-tower retrieval model.

The task owns the loss (in-batch sampled softmax with logQ correction by default, or
pointwise BCE with random / hard / mixed negatives); :class:`TwoTower` stays loss-free.
Validation is full-catalog Recall@K on the validation split; after training, the
popularity prior's weight ``β`` (:mod:`shared.models.towers`) is the one of
``popularity_prior_grid`` with the best validation Recall@K, unless the config fixes it;
then new items' content prior (:func:`fit_content_prior`) is fitted, its penalty and
weight the ones that rank validation's new items best among themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from pydantic import Field

from offline.metrics import SCORE_BLOCK, even_sample, recall_at_k, relevant_sets
from offline.training.history import CausalHistory, HistoryConfig
from offline.training.loop import History, TrainerConfig, fit, to_device
from offline.training.losses import (
    batch_hard_triplet_loss,
    bce_retrieval_loss,
    hard_negatives,
    pairwise_loss,
    sampled_softmax_loss,
)
from offline.training.tracking import Tracking
from shared.config import StrictConfig
from shared.errors import ConfigError
from shared.features import FeatureTables, dense_widths
from shared.models.towers import Fusion, TowerConfig, TwoTower
from shared.schema import DatasetSpec

__all__ = [
    "RetrievalConfig",
    "TwoTowerTrainTask",
    "embed_items",
    "embed_users",
    "fit_content_prior",
    "new_items",
    "positives",
    "seen_pairs",
    "shelf_recall",
    "top_k",
    "train_retrieval",
]

log = logging.getLogger(__name__)


class JointConfig(StrictConfig):
    """``L = L_retrieval + α·L_rating + β·L_ctr`` on the two-tower's similarity ``s = u·v``:
    ``L_rating`` the MSE of ``a·s + b`` against the spec's regression label, ``L_ctr`` the
    BCE of ``σ(s/τ + c)`` for each positive pair and an in-batch shuffled pair as its
    negative (``a, b, c`` learned)."""

    rating: float = Field(0.0, ge=0, description="α")
    ctr: float = Field(0.0, ge=0, description="β")


class RetrievalConfig(HistoryConfig):
    # the two-tower leans more on the latest items and on augmentation than the rankers
    history_decay: float = Field(0.7, gt=0, le=1)
    two_sided: float = Field(0.7, ge=0, le=1)
    embed_dim: int = Field(32, ge=1)
    out_dim: int = Field(64, ge=1)
    hidden: tuple[int, ...] = (128,)
    user_hidden: tuple[int, ...] | None = None  # the user tower's, in place of hidden
    item_hidden: tuple[int, ...] | None = None
    fusion: Fusion = "gate"  # id and features in each tower (shared.models.towers)
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False  # BatchNorm1d inside the towers' MLPs
    similarity: Literal["cosine", "dot"] = Field(
        "cosine", description="cosine: unit tower outputs; dot: the raw inner product"
    )
    id_dropout: float = Field(
        0.0, ge=0, lt=1,
        description="share of training positives whose item is shown as a new one (id "
        "out of vocabulary, interaction aggregates at an unseen item's values), so the item "
        "tower learns to place an item from its features alone (cold items)",
    )  # fmt: skip
    content_prior: bool = Field(
        True,
        description="a new item (no training interactions) takes log q_i of the popularity "
        "prior from a ridge regression of the trained items' log q on their features; "
        "false: the out-of-vocabulary slot's (the rarest)",
    )
    content_prior_grid: tuple[float, ...] = Field(
        (0.0, 0.3, 1.0, 3.0, 10.0, 30.0),
        min_length=1,
        description="weights γ of a new item's predicted log q around the mean (its score "
        "u·v/τ + β·mean + γ·(prediction − mean))",
    )
    content_prior_l2_grid: tuple[float, ...] = Field(
        (100.0, 1.0, 10.0, 1000.0),
        min_length=1,
        description="ridge penalties of the content prior: with content_prior_grid, the pair "
        "whose validation recall@eval_k of the new items ranked among themselves is best "
        "(ties: γ nearest β); when validation has eval_k new items or fewer, the first "
        "penalty and γ = β",
    )
    temperature: float = Field(0.05, gt=0)
    loss: Literal["sampled_softmax", "full_softmax", "bce", "bpr", "margin", "triplet"] = Field(
        "sampled_softmax", description="in-batch softmax (logQ-corrected), the exact softmax, "
        "pointwise BCE, BPR or a margin hinge with drawn negatives, or the batch-hard triplet",
    )  # fmt: skip
    margin: float = Field(0.2, gt=0, description="m of the margin and triplet losses")
    task_heads: dict[str, float] = Field(
        default_factory=dict,
        description="a multi-task two-tower: each named binary task gets its own pair of "
        "heads on the towers, trained by in-batch softmax on its positive rows, with this "
        "weight (the served vectors stay the main task's)",
    )
    joint: JointConfig = JointConfig()
    log_q: bool = True
    negatives: Literal["random", "hard", "mixed"] = "mixed"
    n_negatives: int = Field(8, ge=1)
    eval_k: int = Field(50, ge=1)
    eval_users: int = Field(
        10_000, ge=1,
        description="validation users whose recall@eval_k picks the epoch and the popularity "
        "prior: all of them up to this many, an even sample beyond",
    )  # fmt: skip
    user_encoder: Literal["mean", "transformer"] = "mean"
    encoder_layers: int = Field(2, ge=1)
    encoder_heads: int = Field(2, ge=1)
    popularity_prior: float | None = Field(
        None,
        ge=0,
        description="β of the retrieval score u·v/τ + β·log q_i (0: no prior); "
        "None: the value of popularity_prior_grid with the best validation recall@eval_k",
    )
    popularity_prior_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    trainer: TrainerConfig = TrainerConfig(epochs=20, batch_size=512, lr=3e-3, patience=3)


def positives(
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    split: str,
    labels: tuple[str, ...] = (),
    max_users: int | None = None,
) -> pl.DataFrame:
    """The split's positive (user, item) pairs, in time order (with the ``labels``
    columns): of every user, or of an even sample of ``max_users`` of them."""
    rows = interactions.filter(pl.col("split") == split)
    if spec.positive_label:
        rows = rows.filter(pl.col(spec.positive_label) > 0)
    if max_users is not None:
        users = even_sample(np.unique(rows["user_idx"].to_numpy()), max_users)
        rows = rows.filter(pl.col("user_idx").is_in(users))
    return rows.sort("ts").select("user_idx", "item_idx", "ts", *labels)


def embed_items(model: TwoTower, tables: FeatureTables, batch: int = 8192) -> torch.Tensor:
    """(I, O + 1) serving vectors of every item row (row 0, the unknown item, included)."""
    rows = np.arange(len(tables.items))
    with torch.no_grad():
        return torch.cat(
            [
                model.item_tower.vector(tables.item_inputs(rows[i : i + batch]))
                for i in range(0, len(rows), batch)
            ]
        )


def embed_users(
    model: TwoTower,
    tables: FeatureTables,
    rows: np.ndarray,
    history: np.ndarray | None = None,
    batch: int = 8192,
) -> torch.Tensor:
    """(U, O + 1) serving vectors of user ``rows``; ``history`` (U, H) replaces their
    stored latest items."""
    with torch.no_grad():
        parts = [
            model.user_tower.vector(
                tables.user_inputs(
                    rows[i : i + batch], None if history is None else history[i : i + batch]
                )
            )
            for i in range(0, len(rows), batch)
        ]
    return torch.cat(parts) if parts else torch.empty(0, model.config.vector_dim)


def top_k(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    k: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """(U, k) item rows by inner product, never row 0; ``exclude`` = (user positions, item rows).

    Exact, over blocks of users whose ``block × I`` scores fit :data:`SCORE_BLOCK`: the
    memory stays bounded at a million items and any number of users."""
    n_users, n_items = len(user_emb), len(item_emb)
    k = min(k, n_items - 1)
    out = np.empty((n_users, k), dtype=np.int64)
    by_user = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if exclude is not None and len(exclude[0]):
        order = np.argsort(exclude[0], kind="stable")
        by_user = exclude[0][order], exclude[1][order]
    step = max(1, SCORE_BLOCK // max(n_items, 1))
    for lo in range(0, n_users, step):
        hi = min(n_users, lo + step)
        scores = user_emb[lo:hi] @ item_emb.T  # (block, I)
        scores[:, 0] = -torch.inf
        a, b = np.searchsorted(by_user[0], (lo, hi))
        scores[
            torch.from_numpy(by_user[0][a:b] - lo), torch.from_numpy(by_user[1][a:b])
        ] = -torch.inf
        out[lo:hi] = torch.topk(scores, k, dim=1).indices.numpy()
    return out


def new_items(interactions: pl.DataFrame, split: str) -> np.ndarray:
    """Item rows first met in ``split`` (``valid`` or ``test``): with interactions there
    and none in the splits before it, so never trained on (a cold-item split's, or the
    catalogue's newest); sorted."""
    before = ["train"] if split == "valid" else ["train", "valid"]
    earlier = interactions.filter(pl.col("split").is_in(before))["item_idx"].unique()
    here = interactions.filter(pl.col("split") == split)["item_idx"].unique()
    return np.setdiff1d(here.to_numpy(), earlier.to_numpy())


def shelf_recall(
    user_emb: torch.Tensor,
    shelf_emb: torch.Tensor,
    shelf: np.ndarray,
    user_at: np.ndarray,
    positives: np.ndarray,
    ks: tuple[int, ...],
) -> dict[int, float]:
    """Recall@k of ``positives`` (item rows; ``user_at`` each one's row of ``user_emb``)
    when each user's ``shelf`` items (rows; ``shelf_emb`` their vectors) are ranked among
    themselves, as a new-items shelf ranks them."""
    vectors = torch.cat([shelf_emb[:1], shelf_emb])  # top_k skips row 0
    order = shelf[top_k(user_emb, vectors, max(ks), None) - 1]  # (U, k) item rows
    return {k: float((order[user_at, :k] == positives[:, None]).any(axis=1).mean()) for k in ks}


def seen_pairs(seen: pl.DataFrame, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (position of the user in ``user_rows``, item row) of items each user has seen."""
    pos = pl.DataFrame({"user_idx": user_rows, "pos": np.arange(len(user_rows))})
    pairs = seen.join(pos, on="user_idx").select("pos", "item_idx").unique()
    return pairs["pos"].to_numpy().copy(), pairs["item_idx"].to_numpy().copy()


class TwoTowerTrainTask(torch.nn.Module):
    """Wraps :class:`TwoTower` with its loss so DDP sees one ``forward``.

    The training-only parts live here, not in the model: the task heads of a multi-task
    two-tower and the joint objective's scalars (the served towers are the same either way).
    """

    def __init__(
        self, model: TwoTower, config: RetrievalConfig, log_q: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.register_buffer(
            "log_q", log_q if log_q is not None else torch.zeros(0), persistent=False
        )
        self.all_items = None  # ItemInputs of every item row, for full softmax
        o = model.config.out_dim
        self.task_heads = torch.nn.ModuleDict({
            name: torch.nn.ModuleDict({"user": torch.nn.Linear(o, o), "item": torch.nn.Linear(o, o)})
            for name in config.task_heads
        })  # fmt: skip
        self.rating_affine = torch.nn.Parameter(torch.tensor([1.0, 0.0]))  # a, b
        self.ctr_bias = torch.nn.Parameter(torch.zeros(()))  # c

    def forward(
        self, user, item, item_rows: torch.Tensor, negatives=None, labels=None
    ) -> torch.Tensor:  # noqa: ANN001
        u = self.model.user_embed(user)  # (B, D)
        c, t = self.config, self.config.temperature
        v = self.model.item_embed(item)  # (B, D)
        if c.loss == "full_softmax":  # exact softmax over the whole catalog
            logits = u @ self.model.item_embed(to_device(self.all_items, u.device)).T / t  # (B, I)
            logits[:, 0] = -torch.inf  # row 0 is the unknown item
            loss = F.cross_entropy(logits, item_rows)
        elif c.loss == "sampled_softmax":
            log_q = self.log_q[item_rows] if c.log_q else None
            loss = sampled_softmax_loss(u, v, t, log_q, item_ids=item_rows)
        elif c.loss == "triplet":
            loss = batch_hard_triplet_loss(u, v, item_rows, c.margin)
        else:
            neg = self.model.item_embed(negatives[0]).view(
                len(item_rows), -1, u.shape[1]
            )  # (B, K, D)
            loss = (
                bce_retrieval_loss(u, v, neg, t) if c.loss == "bce"
                else pairwise_loss(u, v, neg, t, c.loss, c.margin)
            )  # fmt: skip
        return loss + self._auxiliary(u, v, item_rows, labels or {})

    def _auxiliary(
        self, u: torch.Tensor, v: torch.Tensor, item_rows: torch.Tensor,
        labels: dict[str, torch.Tensor],
    ) -> torch.Tensor:  # fmt: skip
        """The task heads' and the joint objective's terms."""
        c, t = self.config, self.config.temperature
        total = u.new_zeros(())
        unit = self.model.config.similarity == "cosine"
        for name, heads in self.task_heads.items():
            rows = labels[name] == 1  # (B,)
            if int(rows.sum()) < 2:  # no in-batch negative
                total = total + sum(p.sum() * 0.0 for p in heads.parameters())
                continue
            hu, hv = heads["user"](u[rows]), heads["item"](v[rows])
            if unit:
                hu, hv = F.normalize(hu, dim=-1), F.normalize(hv, dim=-1)
            log_q = self.log_q[item_rows[rows]] if c.log_q else None
            task = sampled_softmax_loss(hu, hv, t, log_q, item_ids=item_rows[rows])
            total = total + c.task_heads[name] * task
        s = (u * v).sum(dim=-1)  # (B,)
        if c.joint.rating:
            rating = labels["rating"]
            known = ~torch.isnan(rating)
            a, b = self.rating_affine
            pred = a * s[known] + b
            total = total + c.joint.rating * F.mse_loss(pred, rating[known].to(pred.dtype))
        if c.joint.ctr:
            shuffled = (u * v.roll(1, dims=0)).sum(dim=-1)  # each user against another row's item
            logits = torch.cat([s, shuffled]) / t + self.ctr_bias
            target = torch.cat([torch.ones_like(s), torch.zeros_like(s)])
            total = total + c.joint.ctr * F.binary_cross_entropy_with_logits(logits, target)
        return total


@dataclass
class RetrievalResult:
    model: TwoTower
    config: TowerConfig
    history: History
    prior_recall: dict[float, float] = field(default_factory=dict)  # β -> valid recall@eval_k
    # (content prior l2, γ) -> validation's new items' recall@eval_k among themselves
    content_recall: dict[tuple[float, float], float] = field(default_factory=dict)


def train_retrieval(
    tables: FeatureTables,
    interactions: pl.DataFrame,
    spec: DatasetSpec,
    config: RetrievalConfig,
    tracking: Tracking | None = None,
) -> RetrievalResult:
    """Train the two-tower model on training positives; keep the best validation Recall@K.

    Raises:
        ConfigError: ``task_heads`` names no binary task of the spec, or ``joint.rating``
            without a regression task ``rating``.
    """
    binary = {t.name for t in spec.tasks if t.kind.value == "binary"}
    unknown = sorted(set(config.task_heads) - binary)
    if unknown:
        raise ConfigError(
            f"retrieval.task_heads: {unknown} are not binary tasks of the data "
            f"(it has {sorted(binary) or 'none'})"
        )
    label_names = tuple(config.task_heads)
    if config.joint.rating:
        if "rating" not in {t.name for t in spec.tasks if t.kind.value == "regression"}:
            raise ConfigError("retrieval.joint.rating needs a regression task named 'rating'")
        label_names += ("rating",)
    train = positives(interactions, spec, "train", label_names).sort(
        "user_idx", "ts", maintain_order=True
    )
    labels = {n: torch.from_numpy(train[n].cast(pl.Float32).to_numpy().copy()) for n in label_names}
    users = train["user_idx"].to_numpy()
    items = train["item_idx"].to_numpy()
    times = train["ts"].to_numpy()
    causal = CausalHistory(users, times, tables.items.id_slot[items], tables.history.shape[1])
    n_items = len(tables.items)
    tower_config = TowerConfig(
        vocab_size=tables.feature_map.size,
        n_user_cat=tables.users.cat.shape[1],
        n_user_multi=tables.users.multi.shape[1],
        n_user_dense=tables.users.n_dense,
        user_dense_widths=dense_widths(tables.users.dense_widths),
        n_item_cat=tables.items.cat.shape[1],
        n_item_multi=tables.items.multi.shape[1],
        n_item_dense=tables.items.n_dense,
        item_dense_widths=dense_widths(tables.items.dense_widths),
        embed_dim=config.embed_dim,
        out_dim=config.out_dim,
        hidden=config.hidden,
        user_hidden=config.user_hidden,
        item_hidden=config.item_hidden,
        fusion=config.fusion,
        dropout=config.dropout,
        batch_norm=config.batch_norm,
        similarity=config.similarity,
        temperature=config.temperature,
        history_decay=config.history_decay,
        user_encoder=config.user_encoder,
        history_length=tables.history.shape[1],
        encoder_layers=config.encoder_layers,
        encoder_heads=config.encoder_heads,
        content_prior=1.0 if config.content_prior else None,
    )
    torch.manual_seed(config.trainer.seed)
    model = TwoTower(tower_config)
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1) / max(1, len(items)))).float()
    task = TwoTowerTrainTask(model, config, log_q)
    if config.loss == "full_softmax":
        task.all_items = tables.item_inputs(np.arange(n_items))
    item_slots = tables.items.id_slot
    rng = np.random.default_rng(config.trainer.seed)
    item_emb_cache: dict[str, torch.Tensor] = {}

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        u_rows, i_rows = users[batch], items[batch]
        if config.history == "causal":  # the items the user chose before this one
            hist = causal.sample(u_rows, times[batch], config.two_sided, rng)
        else:  # the user's latest training items; the target masked out
            hist = causal.latest(u_rows)
            hist[hist == item_slots[i_rows][:, None]] = 0
        negatives = None
        if config.loss in ("bce", "bpr", "margin"):
            negatives = (
                tables.item_inputs(
                    _draw_negatives(
                        model, tables, u_rows, i_rows, config, rng, item_emb_cache, hist
                    )
                ),
            )
        # as DropoutNet: some items seen as a new item would be (no id, no interactions)
        new = rng.random(len(i_rows)) < config.id_dropout if config.id_dropout > 0 else None
        item_inputs = tables.item_inputs(i_rows, new)
        return net(
            tables.user_inputs(u_rows, hist),
            item_inputs,
            torch.from_numpy(i_rows),
            negatives,
            {n: v[torch.from_numpy(batch)] for n, v in labels.items()},
        )

    # an even sample of the users: a full pass at a million items costs minutes per epoch
    valid = positives(interactions, spec, "valid", max_users=config.eval_users)
    valid_users = np.unique(valid["user_idx"].to_numpy())
    seen = interactions.filter(pl.col("split") == "train").select("user_idx", "item_idx")
    exclude = seen_pairs(seen, valid_users)
    valid_pos = np.searchsorted(valid_users, valid["user_idx"].to_numpy())
    valid_relevant = relevant_sets(valid_pos, valid["item_idx"].to_numpy(), len(valid_users))
    valid_history = causal.latest(valid_users)  # every training positive precedes validation

    def validate(_: torch.nn.Module) -> float:
        item_emb_cache["items"] = embed_items(model, tables)
        if len(valid_users) == 0:
            return 0.0
        recs = top_k(
            embed_users(model, tables, valid_users, valid_history),
            item_emb_cache["items"],
            config.eval_k,
            exclude,
        )
        return recall_at_k(recs, valid_relevant, config.eval_k)

    history = fit(
        task, config.trainer, len(users), loss_fn, validate if len(valid_users) else None,
        "two-tower", tracking,
    )  # fmt: skip
    # the popularity prior: log q per item-id slot, β fixed or the grid's best on validation
    slot_log_q = np.zeros(tables.feature_map.size, dtype=np.float32)
    slot_log_q[item_slots] = log_q.numpy()
    prior = torch.from_numpy(slot_log_q)
    grid = (
        (config.popularity_prior,)
        if config.popularity_prior is not None
        else tuple(sorted(config.popularity_prior_grid)) or (0.0,)
    )
    recall = {}
    if len(valid_users) and len(grid) > 1:
        for beta in grid:
            model.set_popularity_prior(prior, beta)
            recall[beta] = validate(model)
    best = max(recall, key=lambda b: (recall[b], -b)) if recall else grid[0]
    model.set_popularity_prior(prior, best)
    tried = {}
    if config.content_prior:
        trained = np.flatnonzero(counts)
        tried = _content_prior(
            model, tables, interactions, trained, log_q.numpy()[trained], config, valid,
            valid_users, valid_history,
        )  # fmt: skip
    return RetrievalResult(model, model.config, history, recall, tried)


def _content_prior(
    model: TwoTower,
    tables: FeatureTables,
    interactions: pl.DataFrame,
    trained: np.ndarray,
    log_q: np.ndarray,
    config: RetrievalConfig,
    valid: pl.DataFrame,
    valid_users: np.ndarray,
    valid_history: np.ndarray,
) -> dict[tuple[float, float], float]:
    """Set the new items' content prior (:func:`fit_content_prior`): of the ridge
    penalties and weights ``γ`` of the config's grids, the pair that ranks validation's
    new items best among themselves, where there are more of them than eval_k (the
    full-catalog recall barely sees them); else the first penalty with ``γ = β`` (the
    prediction weighed as a real log q). ``trained``: the item rows with training
    positives, ``log_q`` theirs. Returns what each pair got."""
    mean, oov = float(log_q.mean()), tables.feature_map.oov("item_id")
    fits: dict[float, tuple[np.ndarray, np.ndarray, float]] = {}

    def use(l2: float, weight: float) -> None:
        if l2 not in fits:
            fits[l2] = fit_content_prior(tables, trained, log_q, l2)
        slots, dense, bias = fits[l2]
        model.set_content_prior(
            torch.from_numpy(slots), torch.from_numpy(dense), bias, mean, oov, weight, l2
        )

    beta = model.config.popularity_prior
    pairs = [(l2, w) for l2 in config.content_prior_l2_grid for w in config.content_prior_grid]
    shelf = new_items(interactions, "valid")
    on_shelf = np.isin(valid["item_idx"].to_numpy(), shelf)
    got = {}
    if len(pairs) > 1 and len(shelf) > config.eval_k and on_shelf.any():
        user_at = np.searchsorted(valid_users, valid["user_idx"].to_numpy()[on_shelf])
        positives_on_shelf = valid["item_idx"].to_numpy()[on_shelf]
        user_emb: dict[float, torch.Tensor] = {}  # γ is the users' side, the fit the items'
        shelf_emb: dict[float, torch.Tensor] = {}
        for l2, weight in pairs:
            use(l2, weight)
            if weight not in user_emb:
                user_emb[weight] = embed_users(model, tables, valid_users, valid_history)
            if l2 not in shelf_emb:
                with torch.no_grad():
                    shelf_emb[l2] = model.item_tower.vector(tables.item_inputs(shelf))
            got[l2, weight] = shelf_recall(
                user_emb[weight], shelf_emb[l2], shelf, user_at, positives_on_shelf,
                (config.eval_k,),
            )[config.eval_k]  # fmt: skip
    if got:
        use(*max(got, key=lambda p: (got[p], -abs(p[1] - beta))))
    else:
        use(*(pairs[0] if len(pairs) == 1 else (config.content_prior_l2_grid[0], beta)))
    return got


RIDGE_ROWS = 100_000  # the content prior is fitted on an even sample of this many items


def fit_content_prior(
    tables: FeatureTables, rows: np.ndarray, log_q: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """A linear model of an item's log q from its features, for new items (the towers'
    vectors carry no popularity: logQ took it out): ridge regression over item ``rows``
    (trained items) of their ``log_q`` with penalty ``l2``, on the indicators of their
    categorical and multi-hot slots and their dense columns (the interaction aggregates
    and ALS factors aside: a new item has none). Returns ``(V,)`` slot weights (padding
    0), dense weights and the bias, as :meth:`TwoTower.set_content_prior` takes them."""
    from scipy import sparse  # noqa: PLC0415
    from scipy.sparse.linalg import LinearOperator, lsqr  # noqa: PLC0415

    i = tables.items
    at = even_sample(rows, RIDGE_ROWS)
    y = log_q[np.searchsorted(rows, at)]
    slots = np.concatenate([i.cat[at], i.multi[at].reshape(len(at), -1)], axis=1)
    nonzero = slots > 0
    x_slots = sparse.csr_matrix(
        (np.ones(nonzero.sum()), (np.nonzero(nonzero)[0], slots[nonzero])),
        shape=(len(at), tables.feature_map.size),
    )
    dense = i.dense[at].astype(np.float64)
    dense[:, i.aggregates] = 0.0
    x = sparse.hstack([x_slots, sparse.csr_matrix(dense)]).tocsr()
    x_mean = np.asarray(x.mean(axis=0)).ravel()
    centred = LinearOperator(  # x − 1·x̄ᵀ, kept sparse
        x.shape,
        matvec=lambda w: x @ w - x_mean @ w,
        rmatvec=lambda r: x.T @ r - x_mean * r.sum(),
        dtype=np.float64,
    )
    w = lsqr(centred, y - y.mean(), damp=l2**0.5)[0]
    n = tables.feature_map.size
    return (
        w[:n].astype(np.float32),
        w[n:].astype(np.float32),
        float(y.mean() - x_mean @ w),
    )


def _draw_negatives(
    model: TwoTower,
    tables: FeatureTables,
    u_rows: np.ndarray,
    i_rows: np.ndarray,
    config: RetrievalConfig,
    rng: np.random.Generator,
    cache: dict[str, torch.Tensor],
    hist: np.ndarray,
) -> np.ndarray:
    """(B·K,) negative item rows: random, hard (top-scored non-positives), or half each."""
    k = config.n_negatives
    n_items = len(tables.items)
    random = rng.integers(1, n_items, (len(u_rows), k))
    if config.negatives == "random" or "items" not in cache:
        return random.reshape(-1)
    device = next(model.parameters()).device  # the model trains there; the cache is on the CPU
    with torch.no_grad():  # serving vectors, as the cached item table holds
        user_emb = model.user_tower.vector(to_device(tables.user_inputs(u_rows, hist), device))
        user_emb = user_emb.cpu()
    exclude = torch.from_numpy(
        np.stack([i_rows, np.zeros_like(i_rows)], axis=1)
    )  # positive + unknown row
    hard = hard_negatives(user_emb, cache["items"], exclude, k).numpy()
    if config.negatives == "hard":
        return hard.reshape(-1)
    mix = rng.random((len(u_rows), k)) < 0.5
    return np.where(mix, hard, random).reshape(-1)
