"""``python -m offline simulate``: the synthetic world's users against a running gateway.

Each visit: a user of the synthetic world (drawn by the generator's activity law) asks
``/recommend/{uid}?top_k=K``; their clicks, carts and purchases on what was shown are
drawn from the world's true probabilities at the gateway's hour and day, on the home
page in the slots they were shown in (the world's position bias included); the
impressions (page ``home``, their position, the answer's ``request_id``) and outcomes
are posted to ``/events``. The report gives what the served lists earned (clicks and
purchases per 100 impressions, drawn and expected) next to what the oracle's lists
would have earned in expectation: per visit, the K items of highest true p(click) in
the top slot among those the user had not interacted with (the gateway leaves those
out too), shown in that order.
Simulated feedback then changes the next answers (fresh events), as it would live.

The world is the one of the config's ``dataset_options`` (the synthetic default
unless the bundle was trained on other options): the same users and items.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import numpy as np
import polars as pl

from offline.datasets.synthetic import SyntheticConfig, World
from offline.datasets.synthetic import spec as synthetic_spec
from shared.errors import ConfigError

__all__ = ["Report", "simulate"]

_TASKS = tuple(t.name for t in synthetic_spec().tasks)  # the funnel, as the world draws it


@dataclass(frozen=True)
class Report:
    visits: int
    impressions: int
    clicks: int
    purchases: int
    expected_clicks: float
    expected_purchases: float
    oracle_clicks: float  # expected, of the oracle's lists
    oracle_purchases: float

    def per_100(self, value: float) -> float:
        return 100 * value / max(self.impressions, 1)

    def lines(self) -> Iterator[str]:
        p = self.per_100
        yield (
            f"simulate: {self.visits} visits, {self.impressions} impressions: "
            f"{p(self.clicks):.2f} clicks and {p(self.purchases):.2f} purchases per 100 "
            f"(expected {p(self.expected_clicks):.2f} / {p(self.expected_purchases):.3f})"
        )
        yield (
            f"simulate: the oracle's lists would earn {p(self.oracle_clicks):.2f} clicks and "
            f"{p(self.oracle_purchases):.3f} purchases per 100: the served lists earn "
            f"{self.expected_clicks / max(self.oracle_clicks, 1e-9):.1%} of its clicks"
        )


def simulate(
    gateway: str,
    options: SyntheticConfig,
    visits: int = 1000,
    top_k: int = 10,
    seed: int = 1,
    seen: pl.DataFrame | None = None,
    api_key: str | None = None,
) -> Report:
    """Run ``visits`` visits against ``gateway`` (its base URL) and report their value.

    Args:
        seen (pl.DataFrame | None): ``user_id``, ``item_id`` pairs the users interacted
            with before (the bundle's), left out of the oracle's lists as the gateway
            leaves them out of its own.

    Raises:
        ConfigError: the gateway answers with an error or does not answer.
    """
    world = World.draw(options, np.random.default_rng(options.seed))
    rng = np.random.default_rng(seed)
    c = options
    weights = 1.0 / np.arange(1, c.n_users + 1) ** c.user_activity_exponent
    visitors = rng.choice(c.n_users, visits, p=rng.permutation(weights / weights.sum()))
    banned: dict[int, set[int]] = {}
    if seen is not None:
        for uid, item in seen.select("user_id", "item_id").iter_rows():
            banned.setdefault(int(uid[1:]), set()).add(int(item[1:]))
    totals = np.zeros(8)
    headers = {"X-API-Key": api_key} if api_key else {}
    run = f"{time.time_ns():x}"
    every_item = np.arange(c.n_items)
    with httpx.Client(base_url=gateway, timeout=10, headers=headers) as client:
        for n, user in enumerate(visitors):
            now = datetime.now(UTC)  # the gateway's clock gives the context features
            hour, dow = now.hour, now.weekday()
            response = _call(client.get, f"/recommend/u{user}", params={"top_k": top_k})
            shown = np.array([int(i["id"][1:]) for i in response["items"]], dtype=np.int64)
            n_shown = len(shown)
            p_click, p_atc, p_buy = world.probabilities(
                np.full(n_shown, user),
                shown,
                np.full(n_shown, hour),
                np.full(n_shown, dow),
                0,
                np.arange(n_shown),
            )  # fmt: skip  (on the home page, in the slots shown)
            events, acted = [], []
            for position, item in enumerate(shown.tolist()):
                click = rng.random() < p_click[position]
                cart = click and rng.random() < p_atc[position]
                buy = cart and rng.random() < p_buy[position]
                outcome = [
                    t for t, happened in zip(_TASKS, (click, cart, buy), strict=True) if happened
                ]
                if outcome:
                    acted.append(item)
                for kind in ("impression", *outcome):
                    events.append({
                        "event_id": f"sim-{run}-{n}-{position}-{kind}", "uid": f"u{user}",
                        "item_id": f"i{item}", "type": kind, "request_id": response["request_id"],
                        "context": {"page": "home", "position": position},
                    })  # fmt: skip
                totals[:3] += (1, click, buy)
            if events:  # an empty answer shows nothing
                _call(client.post, "/events", json={"events": events})
            clicks, purchases = world.list_value(np.array([user]), shown[None], hour, dow)
            totals[3] += clicks[0]
            totals[4] += purchases[0]
            # the oracle's best list: every allowed item by its true p(click) in the top slot
            top, _, _ = world.probabilities(
                np.full(c.n_items, user), every_item, np.full(c.n_items, hour),
                np.full(c.n_items, dow),
            )  # fmt: skip
            allowed = np.ones(c.n_items, dtype=bool)
            allowed[list(banned.get(int(user), ()))] = False
            best = np.argsort(-np.where(allowed, top, -1.0))[:n_shown]
            clicks, purchases = world.list_value(np.array([user]), best[None], hour, dow)
            totals[5] += clicks[0]
            totals[6] += purchases[0]
            # what the user just acted on is left out next time, by the gateway and the oracle
            banned.setdefault(int(user), set()).update(acted)
    return Report(
        visits=visits, impressions=int(totals[0]), clicks=int(totals[1]), purchases=int(totals[2]),
        expected_clicks=totals[3], expected_purchases=totals[4], oracle_clicks=totals[5],
        oracle_purchases=totals[6],
    )  # fmt: skip


def _call(method, path: str, **kwargs) -> dict:
    try:
        response = method(path, **kwargs)
    except httpx.HTTPError as e:
        raise ConfigError(f"the gateway does not answer {path}: {e}") from None
    if response.status_code >= 300:
        raise ConfigError(
            f"the gateway answers {path} with {response.status_code}: {response.text[:200]}"
        )
    return response.json()
