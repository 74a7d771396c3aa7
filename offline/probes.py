"""The probe set a ranker ships with (:mod:`shared.probes`), computed along the offline path."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from offline.training.retrieval import embed_items, embed_users
from shared.features import Context, ContextBatch, FeatureTables
from shared.models.rankers import Ranker, final_score
from shared.models.towers import TwoTower
from shared.probes import Probe

__all__ = ["probe_set"]


def probe_set(
    ranker: Ranker,
    two_tower: TwoTower,
    tables: FeatureTables,
    weights: Mapping[str, float],
    retrieval_weight: float,
    users: int = 8,
    items: int = 8,
    seed: int = 0,
) -> list[Probe]:
    """``users`` users (the unknown one first), ``items`` items each, in a drawn context.

    The expected values are :meth:`Ranker.score_with_probabilities` on the full
    inputs and the two-tower's ``u·v/τ``, blended by :func:`final_score`: the
    offline model, not its serving split.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = len(tables.users), len(tables.items)
    user_rows = [0, *rng.choice(np.arange(1, n_users), min(users - 1, n_users - 1), replace=False)]
    item_vectors = embed_items(two_tower, tables)
    probes = []
    for user in user_rows:
        rows = rng.choice(np.arange(1, n_items), min(items, n_items - 1), replace=False)
        context = _drawn_context(tables, rng)
        n = len(rows)
        inputs = tables.ranker_inputs(np.full(n, user), rows, ContextBatch.of(context, n))
        with torch.no_grad():
            score, probs = ranker.score_with_probabilities(inputs, weights)
            u = embed_users(two_tower, tables, np.array([user]))
            logit = item_vectors[torch.from_numpy(rows)] @ u[0] / two_tower.config.temperature
            final = final_score(score, logit, retrieval_weight)
        tasks = [t.name for t in ranker.config.tasks]
        probes.append(
            Probe(
                user_row=int(user),
                context_cat=list(context.cat),
                context_dense=list(context.dense),
                anchor_row=context.anchor,
                item_rows=rows.tolist(),
                score=final.tolist(),
                probs=np.stack([probs[t].numpy() for t in tasks], axis=1).tolist(),
            )
        )
    return probes


def _drawn_context(tables: FeatureTables, rng: np.random.Generator) -> Context:
    """Any slot of each categorical context field (out-of-vocabulary included), a
    standard normal numeric, any item as the anchor."""
    fmap, c = tables.feature_map, tables.context
    cat = tuple(fmap.oov(n) + int(rng.integers(0, fmap.width(n) + 1)) for n in c.categorical)
    dense = tuple(float(np.float32(rng.normal())) for _ in c.numeric)
    return Context(cat, dense, int(rng.integers(0, len(tables.items))) if c.anchor else 0)
