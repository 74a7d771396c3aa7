"""A deterministic synthetic impression log with known click probabilities.

Generative story (all vectorised, reproducible from ``seed``):

- every user has a hidden taste u ∈ R^k built from their age band, gender and region
  (plus a small personal part); every item a taste v = centroid(category) + noise and a
  hidden quality q. So the visible features carry most, not all, of the signal.
- item exposure follows a power law (a few items get most impressions); user activity
  too, more gently.
- each impression has a context: the hour and day of week of its timestamp, the page
  (home, search, or an item's detail page, whose item is the impression's ``anchor``)
  and the slot it was shown in (``position`` 0–9). A logging policy put popular and
  good items higher, so where an item was shown says something about it too. The true
  click probability

      p(click) = σ(b + α·⟨u, v⟩/√k + q + device×hour + weekend×category − young×price
                   − γ·log2(1 + position) + page effects)

  with page effects: search +0.3 + 0.4·⟨u, v⟩/√k (intent), detail −0.2 + 0.8 when the
  item shares the anchor's category ("more like this").

  then add_to_cart | click and purchase | add_to_cart are drawn from their own
  probabilities (price hurts, desktop helps). The column ``p_click`` keeps the true
  p(click) for the oracle AUC; it is never a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field

from shared.config import StrictConfig
from shared.schema import Dataset, DatasetSpec, Feature, FeatureKind, Task

__all__ = ["N_SLOTS", "PAGES", "SyntheticConfig", "TrueValue", "World", "load"]

_DAY = 86_400


class SyntheticConfig(StrictConfig):
    seed: int = 42
    # ~250 impressions per user and ~600 per item: enough for a model to estimate the
    # hidden per-user and per-item parts (with 100 per user and 200 per item even a
    # correctly specified factorization machine stays ~0.03 AUC below the oracle)
    n_users: int = Field(2000, ge=10)
    n_items: int = Field(800, ge=10)
    n_impressions: int = Field(500_000, ge=100)
    n_categories: int = Field(24, ge=2)
    n_tags: int = Field(32, ge=2)
    days: int = Field(60, ge=1)
    start: int = Field(
        1_704_067_200, ge=0, multiple_of=86_400,
        description="Unix time of the log's first day (a midnight UTC; default 2024-01-01): "
        "a loop against a live gateway starts it `days` before today, so that the events "
        "the gateway logs continue the log instead of following it years later",
    )  # fmt: skip
    taste_dim: int = Field(4, ge=2)
    click_bias: float = -2.2
    taste_strength: float = 1.6
    personal_taste: float = Field(
        0.35, ge=0, description="share of a user's taste not in their features"
    )
    item_taste_noise: float = Field(0.45, ge=0, description="spread of items around their category")
    item_quality: float = Field(0.4, ge=0, description="spread of hidden per-item quality (logit)")
    item_popularity_exponent: float = Field(1.0, ge=0)
    user_activity_exponent: float = Field(0.5, ge=0)
    position_bias: float = Field(0.4, ge=0, description="γ: logit lost per log2(1 + slot)")
    logging_policy: float = Field(
        1.8, ge=0, description="how strongly the logging policy put popular, good items on top"
    )


PAGES = ("home", "search", "detail")
PAGE_SHARE = (0.6, 0.25, 0.15)
N_SLOTS = 10


SPEC_FEATURES = (
    Feature(name="age_band", kind=FeatureKind.CATEGORICAL, owner="user"),
    Feature(name="gender", kind=FeatureKind.CATEGORICAL, owner="user"),
    Feature(name="region", kind=FeatureKind.CATEGORICAL, owner="user"),
    Feature(name="device", kind=FeatureKind.CATEGORICAL, owner="user"),
    Feature(name="category", kind=FeatureKind.CATEGORICAL, owner="item"),
    Feature(name="brand", kind=FeatureKind.CATEGORICAL, owner="item"),
    Feature(name="price_band", kind=FeatureKind.CATEGORICAL, owner="item"),
    Feature(name="price", kind=FeatureKind.NUMERIC, owner="item"),
    Feature(name="tags", kind=FeatureKind.MULTI_HOT, owner="item"),
    Feature(name="page", kind=FeatureKind.CATEGORICAL, owner="context", default="home"),
    Feature(name="position", kind=FeatureKind.CATEGORICAL, owner="context", default="0",
            position=True),
    Feature(name="anchor", kind=FeatureKind.ITEM, owner="context"),
)  # fmt: skip


def spec() -> DatasetSpec:
    return DatasetSpec(
        name="synthetic",
        features=SPEC_FEATURES,
        tasks=(
            Task(name="click", score_weight=1.0),
            Task(name="add_to_cart", parent="click", score_weight=2.0),
            Task(name="purchase", parent="add_to_cart", score_weight=4.0),
        ),
        implicit=False,
        positive_label="click",
        oracle_column="p_click",
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


@dataclass(frozen=True)
class World:
    """The hidden side of the generator: every user's and item's taste, quality and
    visible attributes, and the true probabilities of an impression's outcomes."""

    config: SyntheticConfig
    age: np.ndarray  # (U,) band index
    gender: np.ndarray
    region: np.ndarray
    device: np.ndarray  # (U,) 0 mobile, 1 desktop, 2 tablet
    taste: np.ndarray  # (U, k)
    category: np.ndarray  # (I,)
    item_taste: np.ndarray  # (I, k)
    quality: np.ndarray  # (I,) logit
    brand: np.ndarray
    price_band: np.ndarray
    price: np.ndarray
    tags: list[list[str]]

    @classmethod
    def draw(cls, config: SyntheticConfig, rng: np.random.Generator) -> World:
        """The users and items of ``config`` (the first draws of ``rng``)."""
        c, k = config, config.taste_dim
        # users: taste from visible features plus a small personal part
        age = rng.integers(0, 6, c.n_users)
        gender = rng.integers(0, 2, c.n_users)
        region = rng.integers(0, 10, c.n_users)
        device = rng.choice(3, c.n_users, p=[0.5, 0.35, 0.15])
        A, G, R = rng.normal(0, 1, (6, k)), rng.normal(0, 0.8, (2, k)), rng.normal(0, 0.6, (10, k))
        personal = c.personal_taste * rng.normal(0, 1, (c.n_users, k))
        u = (A[age] + G[gender] + R[region] + personal) / 1.5
        # items: taste around their category's centroid, a hidden quality, tags and price
        cat = rng.integers(0, c.n_categories, c.n_items)
        v = rng.normal(0, 1, (c.n_categories, k))[cat] + c.item_taste_noise * rng.normal(
            0, 1, (c.n_items, k)
        )
        quality = rng.normal(0, c.item_quality, c.n_items)
        brand = cat * 4 + rng.integers(0, 4, c.n_items)
        price_band = np.clip(np.round(rng.normal(2 + (cat % 3) - 1, 1.0)), 0, 4).astype(np.int64)
        price = np.round(np.exp(2.5 + 0.6 * price_band + 0.2 * rng.normal(0, 1, c.n_items)), 2)
        tag_pref = rng.dirichlet(np.full(c.n_tags, 0.3), c.n_categories)  # (C, T)
        n_tags = rng.integers(1, 4, c.n_items)
        tag_draw = np.argsort(-np.log(rng.random((c.n_items, c.n_tags))) / tag_pref[cat], axis=1)
        tags = [[f"t{t}" for t in row[:n]] for row, n in zip(tag_draw, n_tags, strict=True)]
        return cls(config, age, gender, region, device, u, cat, v, quality, brand, price_band,
                   price, tags)  # fmt: skip

    def probabilities(
        self,
        users: np.ndarray,
        items: np.ndarray,
        hour: np.ndarray,
        dow: np.ndarray,
        page: np.ndarray | int = 0,
        position: np.ndarray | int = 0,
        anchor: np.ndarray | int = -1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``p(click)``, ``p(add_to_cart | click)``, ``p(purchase | add_to_cart)`` of each
        (user row, item row, hour, day of week, page index in :data:`PAGES`, slot, anchor
        item row or -1)."""
        c = self.config
        dv, pb = self.device[users], self.price_band[items]
        affinity = np.einsum("nk,nk->n", self.taste[users], self.item_taste[items]) / np.sqrt(
            c.taste_dim
        )
        page, anchor = np.asarray(page), np.asarray(anchor)
        same = (anchor >= 0) & (self.category[np.maximum(anchor, 0)] == self.category[items])
        context = (
            0.5 * ((dv == 0) & (hour >= 18))
            + 0.3 * ((dv == 1) & (hour >= 9) & (hour < 18))
            + 0.3 * ((dow >= 5) & (self.category[items] % 4 == 0))
            - 0.25 * pb * (self.age[users] < 2)
            - c.position_bias * np.log2(1 + np.asarray(position))
            + (page == 1) * (0.3 + 0.4 * affinity)
            + (page == 2) * (-0.2 + 0.8 * same)
        )
        logit = c.click_bias + c.taste_strength * affinity + self.quality[items] + context
        p_atc = _sigmoid(-0.8 + 0.6 * affinity - 0.35 * (pb - 2))
        p_buy = _sigmoid(-0.4 - 0.5 * (pb - 2) + 0.4 * (dv == 1))
        return _sigmoid(logit), p_atc, p_buy

    def list_value(
        self, users: np.ndarray, lists: np.ndarray, hour: np.ndarray, dow: np.ndarray,
        page: np.ndarray | int = 0, anchor: np.ndarray | int = -1,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Expected clicks and purchases of each list of item rows ``(L, k)`` shown to
        ``users (L,)`` in each row's context (``(L,)`` arrays or scalars), slot 0 first
        (-1 pads a short list): ``(L,)`` each."""
        n, k = lists.shape
        each = lambda a: np.repeat(np.broadcast_to(np.asarray(a), (n,)), k)  # noqa: E731
        items = lists.reshape(-1)
        shown = items >= 0
        p_click, p_atc, p_buy = self.probabilities(
            each(users), np.maximum(items, 0), each(hour), each(dow), each(page),
            np.tile(np.arange(k), n), each(anchor),
        )  # fmt: skip
        clicks = (p_click * shown).reshape(n, k).sum(axis=1)
        return clicks, (p_click * p_atc * p_buy * shown).reshape(n, k).sum(axis=1)


@dataclass(frozen=True)
class TrueValue:
    """What lists of the data's own users and items are worth in the world that made
    them: expected clicks and purchases under its true probabilities, slot by slot (the
    position bias included). Evaluation on synthetic data measures ranking with it."""

    world: World

    @classmethod
    def of(cls, config: SyntheticConfig) -> TrueValue:
        return cls(World.draw(config, np.random.default_rng(config.seed)))

    @staticmethod
    def _rows(ids: np.ndarray) -> np.ndarray:
        """World rows of ids like ``u12`` / ``i7``; -1 for anything else ('' pads)."""
        flat = pl.Series(np.asarray(ids, dtype=object).reshape(-1).astype(str))
        rows = flat.str.slice(1).cast(pl.Int64, strict=False).fill_null(-1).to_numpy()
        return rows.reshape(np.shape(ids))

    def _context(self, context: pl.DataFrame) -> tuple[np.ndarray, ...]:
        page = context["page"].replace_strict(
            {p: i for i, p in enumerate(PAGES)}, default=0, return_dtype=pl.Int64
        )
        return (context["hour"].to_numpy(), context["dow"].to_numpy(), page.to_numpy(),
                self._rows(context["anchor"].fill_null("").to_numpy()))  # fmt: skip

    def lists(
        self, users: np.ndarray, items: np.ndarray, context: pl.DataFrame
    ) -> dict[str, np.ndarray]:
        """``{"clicks", "purchases"}``: ``(U,)`` expected values of the lists ``items (U, k)``
        (ids) shown to ``users (U,)`` (ids) in the contexts of ``context``'s rows (``hour``,
        ``dow``, ``page``, ``anchor``)."""
        clicks, purchases = self.world.list_value(
            self._rows(users), self._rows(items), *self._context(context)
        )
        return {"clicks": clicks, "purchases": purchases}

    def best(
        self, users: np.ndarray, items: np.ndarray, context: pl.DataFrame, k: int
    ) -> dict[str, np.ndarray]:
        """The oracle's lists: per measure, the ``k`` of ``items (U, C)`` worth most in the
        top slot, best first, as ``(U, k)`` ids."""
        u, c = items.shape
        hour, dow, page, anchor = (np.repeat(a, c) for a in self._context(context))
        p_click, p_atc, p_buy = self.world.probabilities(
            np.repeat(self._rows(users), c), self._rows(items).reshape(-1), hour, dow, page,
            0, anchor,
        )  # fmt: skip
        out = {}
        for name, value in (("clicks", p_click), ("purchases", p_click * p_atc * p_buy)):
            order = np.argsort(-value.reshape(u, c), axis=1, kind="stable")[:, :k]
            out[name] = np.take_along_axis(items, order, axis=1)
        return out


def load(data_dir: Path | None, config: SyntheticConfig) -> Dataset:
    """Generate the tables; ``data_dir`` is unused (no files needed)."""
    c = config
    rng = np.random.default_rng(c.seed)
    w = World.draw(c, rng)
    cat, age, gender, region, device = w.category, w.age, w.gender, w.region, w.device
    brand, price_band, price, tags = w.brand, w.price_band, w.price, w.tags

    # impressions: who sees what, when
    n = c.n_impressions
    uid = rng.choice(c.n_users, n, p=_power_law(rng, c.n_users, c.user_activity_exponent))
    popularity = _power_law(rng, c.n_items, c.item_popularity_exponent)
    iid = rng.choice(c.n_items, n, p=popularity)
    hour_profile = 1.0 + np.sin((np.arange(24) - 14) / 24 * 2 * np.pi) ** 2 * 3
    hour = rng.choice(24, n, p=hour_profile / hour_profile.sum())
    day = rng.integers(0, c.days, n)
    ts = c.start + day * _DAY + hour * 3600 + rng.integers(0, 3600, n)
    dow = (c.start // _DAY + day + 3) % 7  # 1970-01-01 was a Thursday: 5 and 6 are the weekend
    page = rng.choice(len(PAGES), n, p=PAGE_SHARE)
    # a detail page's anchor: an item of the shown one's category (60 %) or any item
    by_category = np.argsort(cat, kind="stable")
    starts = np.searchsorted(cat[by_category], np.arange(c.n_categories))
    sizes = np.bincount(cat, minlength=c.n_categories)
    alike = by_category[starts[cat[iid]] + (rng.random(n) * sizes[cat[iid]]).astype(np.int64)]
    anchor = np.where(rng.random(n) < 0.6, alike, rng.integers(0, c.n_items, n))
    anchor = np.where(page == 2, anchor, -1)
    # the logging policy's slot: popular, good items higher, with noise
    score = np.log(popularity[iid]) + w.quality[iid] / max(c.item_quality, 1e-9)
    score = (score - score.mean()) / max(score.std(), 1e-9)
    position = np.clip(
        np.round(4.5 - c.logging_policy * score + rng.normal(0, 1.5, n)), 0, N_SLOTS - 1
    ).astype(np.int64)

    p_click = np.empty(n)
    atc = np.empty(n)
    purchase = np.empty(n)
    click = np.empty(n)
    for lo in range(0, n, 1_000_000):  # chunks bound memory at 10M+ impressions
        s = slice(lo, min(n, lo + 1_000_000))
        p_click[s], p_atc, p_buy = w.probabilities(
            uid[s], iid[s], hour[s], dow[s], page[s], position[s], anchor[s]
        )
        click[s] = rng.random(len(p_atc)) < p_click[s]
        atc[s] = click[s] * (rng.random(len(p_atc)) < p_atc)
        purchase[s] = atc[s] * (rng.random(len(p_atc)) < p_buy)

    interactions = pl.DataFrame(
        {
            "user_id": pl.Series(uid).cast(pl.String).str.replace(r"^", "u"),
            "item_id": pl.Series(iid).cast(pl.String).str.replace(r"^", "i"),
            "ts": pl.Series(ts, dtype=pl.Int64),
            "page": np.array(PAGES)[page],
            "position": position.astype(str),
            "anchor": pl.Series(anchor).cast(pl.String).str.replace(r"^", "i"),
            "click": click,
            "add_to_cart": atc,
            "purchase": purchase,
            "p_click": p_click,
        }
    ).with_columns(anchor=pl.when(pl.col("anchor") != "i-1").then("anchor"))
    interactions = interactions.sort("ts", "user_id", maintain_order=True)
    labels = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
    users = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(c.n_users)],
            "age_band": [labels[a] for a in age],
            "gender": np.where(gender == 0, "f", "m"),
            "region": [f"r{r}" for r in region],
            "device": np.array(["mobile", "desktop", "tablet"])[device],
        }
    )
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(c.n_items)],
            "category": [f"c{x}" for x in cat],
            "brand": [f"b{x}" for x in brand],
            "price_band": [f"p{x}" for x in price_band],
            "price": price.astype(np.float64),
            "tags": pl.Series(tags, dtype=pl.List(pl.String)),
        }
    )
    return Dataset(
        interactions=interactions, users=users, items=items, spec=spec(), source="synthetic",
        origin={"synthetic": c.model_dump()},
    )  # fmt: skip
