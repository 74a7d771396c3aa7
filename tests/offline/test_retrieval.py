import numpy as np
import polars as pl
import pytest
import torch

from offline import etl
from offline.datasets import load_dataset
from offline.datasets.movielens import movielens_spec
from offline.training import retrieval
from offline.training.loop import TrainerConfig
from offline.training.retrieval import RetrievalConfig, top_k, train_retrieval
from shared.errors import ConfigError
from shared.features import FeatureTables
from shared.models.checkpoint import load_model, save_model
from shared.schema import Dataset, FeatureKind


@pytest.fixture(scope="module")
def tiny():
    data = load_dataset("synthetic", options={"n_users": 120, "n_items": 60, "n_impressions": 4000})
    result = etl.run(data, etl.EtlConfig())
    tables = FeatureTables.from_frames(result.users, result.items, result.spec, result.feature_map)
    return tables, result


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "sampled_softmax", "log_q": False, "history": "latest"},
        {"loss": "full_softmax"},
        {"loss": "bce", "negatives": "random"},
        {"loss": "bce", "negatives": "mixed", "n_negatives": 4},
        {"loss": "bpr", "negatives": "random", "n_negatives": 4},
        {"loss": "margin", "negatives": "random", "margin": 0.3},
        {"loss": "triplet", "margin": 0.2},
        {"task_heads": {"add_to_cart": 0.5, "purchase": 0.5}},
        {"joint": {"ctr": 0.5}},
        {"similarity": "dot", "batch_norm": True},
    ],
    ids=[
        "sampled-no-logq",
        "full-softmax",
        "bce-random",
        "bce-mixed",
        "bpr",
        "margin",
        "triplet",
        "multi-task-heads",
        "joint-ctr",
        "dot-batch-norm",
    ],  # fmt: skip
)
def test_every_retrieval_loss_trains_and_validates(tiny, options) -> None:
    tables, result = tiny
    config = RetrievalConfig(**options, trainer=TrainerConfig(epochs=2, batch_size=128, patience=2))
    trained = train_retrieval(tables, result.interactions, result.spec, config)
    losses = [row["train_loss"] for row in trained.history.epochs]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    assert losses[1] < losses[0]
    assert 0.0 <= trained.history.best_metric <= 1.0


def test_the_multi_task_heads_train_but_serve_the_main_towers(tiny) -> None:
    tables, result = tiny
    trainer = TrainerConfig(epochs=1, batch_size=128)
    plain = train_retrieval(tables, result.interactions, result.spec,
                            RetrievalConfig(trainer=trainer))  # fmt: skip
    heads = train_retrieval(tables, result.interactions, result.spec,
                            RetrievalConfig(trainer=trainer, task_heads={"purchase": 1.0}))  # fmt: skip
    # the exported model is the same two-tower (the heads are training-only) ...
    assert plain.model.state_dict().keys() == heads.model.state_dict().keys()
    # ... shaped differently by the extra task
    a, b = plain.model.state_dict(), heads.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_bad_objective_options_name_the_problem(tiny) -> None:
    tables, result = tiny
    trainer = TrainerConfig(epochs=1, batch_size=128)
    with pytest.raises(ConfigError, match=r"task_heads: \['share'\] are not binary tasks"):
        train_retrieval(tables, result.interactions, result.spec,
                        RetrievalConfig(trainer=trainer, task_heads={"share": 1.0}))  # fmt: skip
    with pytest.raises(ConfigError, match="joint.rating needs a regression task"):
        train_retrieval(tables, result.interactions, result.spec,
                        RetrievalConfig(trainer=trainer, joint={"rating": 1.0}))  # fmt: skip


def test_the_joint_objective_fits_ratings_on_movielens(ml100k_dir) -> None:
    data = load_dataset("movielens-100k", ml100k_dir)
    result = etl.run(data, etl.EtlConfig(max_interactions=8000))
    tables = FeatureTables.from_frames(result.users, result.items, result.spec, result.feature_map)
    config = RetrievalConfig(
        joint={"rating": 1.0, "ctr": 0.5}, trainer=TrainerConfig(epochs=2, batch_size=256)
    )
    trained = train_retrieval(tables, result.interactions, result.spec, config)
    losses = [row["train_loss"] for row in trained.history.epochs]
    assert all(loss == loss for loss in losses) and losses[1] < losses[0]


def test_top_k_in_blocks_of_users_is_exact_and_excludes_per_user(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 4, generator=gen), torch.randn(30, 4, generator=gen)
    exclude = np.array([0, 0, 3, 6, 6]), np.array([5, 9, 2, 1, 7])
    scores = users @ items.T
    scores[:, 0] = -torch.inf
    scores[torch.from_numpy(exclude[0]), torch.from_numpy(exclude[1])] = -torch.inf
    truth = torch.topk(scores, 10, dim=1).indices.numpy()
    monkeypatch.setattr(retrieval, "SCORE_BLOCK", 60)  # two users per block
    got = top_k(users, items, 10, exclude)
    np.testing.assert_array_equal(got, truth)
    assert got.shape == (7, 10) and (got != 0).all()


def _hits_and_flops(n_users: int = 150, n_items: int = 80, n: int = 8000) -> Dataset:
    """Items of kind "hit" (even ids) draw 8× the interactions of "flop" ones; the last
    20 items appear only in the last tenth of the time, so a cold-item split holds out
    exactly them (10 for validation, 10 for test), half hits and half flops."""
    rng = np.random.default_rng(0)
    kind = np.where(np.arange(n_items) % 2 == 0, "hit", "flop")
    weight = np.where(kind == "hit", 8.0, 1.0)
    items = rng.choice(n_items, n, p=weight / weight.sum())
    late = items >= n_items - 20
    ts = np.where(late, rng.integers(900_000, 1_000_000, n), rng.integers(0, 1_000_000, n))
    interactions = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, n_users, n)],
            "item_id": [f"i{i}" for i in items],
            "ts": ts.astype(np.int64),
            "like": np.ones(n),
            "rating": np.full(n, 5.0),
        }
    )
    return Dataset(
        interactions=interactions,
        users=pl.DataFrame({"user_id": [f"u{u}" for u in range(n_users)]}),
        items=pl.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "kind": kind}),
        spec=movielens_spec("hits-and-flops", (), {"kind": FeatureKind.CATEGORICAL}),
    ).validate()


@pytest.fixture(scope="module")
def hits_and_flops():
    result = etl.run(_hits_and_flops(), etl.EtlConfig(cold_items=0.125, als={"factors": 4}))
    tables = FeatureTables.from_frames(result.users, result.items, result.spec, result.feature_map)
    return tables, result


def test_new_items_show_the_aggregates_of_an_item_never_interacted_with(hits_and_flops) -> None:
    tables, result = hits_and_flops
    items = tables.items
    new = np.isin(np.arange(len(items)), retrieval.new_items(result.interactions, "test"))
    # n_interactions, mean_rating, hotness and 4 ALS factors
    assert new.sum() == 10 and len(items.aggregates) == 3 + 4
    # ETL's unseen values are what its never-trained items really got
    np.testing.assert_allclose(
        items.dense[np.ix_(new, items.aggregates)], items.unseen[None, :].repeat(10, 0), atol=1e-6
    )
    shown = tables.item_inputs(np.arange(1, 11), np.arange(10) < 4)  # warm items, 4 as new
    assert (shown.id[:4] == tables.feature_map.oov("item_id")).all()
    assert (shown.id[4:] == torch.from_numpy(items.id_slot[5:11])).all()
    np.testing.assert_array_equal(
        shown.dense[:4, items.aggregates].numpy(), items.unseen[None].repeat(4, 0)
    )
    np.testing.assert_array_equal(shown.dense[4:].numpy(), items.dense[5:11])
    assert (shown.cat.numpy() == items.cat[1:11]).all()  # their content stays


def test_new_items_take_the_prior_their_features_predict(hits_and_flops, tmp_path) -> None:
    tables, result = hits_and_flops
    trainer = TrainerConfig(epochs=2, batch_size=256, patience=2)
    # eval_k below validation's 10 new items: the ridge penalty and weight are tuned
    config = RetrievalConfig(trainer=trainer, eval_k=5, popularity_prior=0.5, id_dropout=0.3)
    trained = train_retrieval(tables, result.interactions, result.spec, config)
    got, c = trained.content_recall, trained.config
    assert len(got) == len(config.content_prior_grid) * len(config.content_prior_l2_grid)
    assert got[c.content_prior_l2, c.content_prior] == max(got.values())
    rows = retrieval.new_items(result.interactions, "test")
    hit = np.array([int(tables.items.ids[r][1:]) % 2 == 0 for r in rows])
    items = retrieval.embed_items(trained.model, tables)
    assert items.shape[1] == c.out_dim + 2
    warm = np.setdiff1d(
        np.arange(1, len(tables.items)),
        np.concatenate([rows, retrieval.new_items(result.interactions, "valid")]),
    )
    assert (items[warm, -1] == 0).all()  # the trained items' spread coordinate
    spread = items[rows, -1].numpy()
    assert spread[hit].min() > 0 > spread[~hit].max()  # new hits predicted more popular
    # u'·v'/τ = u·v/τ + β·m + γ·(p_i − m) for a new item
    user = retrieval.embed_users(trained.model, tables, np.array([1]))[0]
    torch.testing.assert_close(user[-2:], torch.tensor([0.5, c.content_prior]) * c.temperature)
    torch.testing.assert_close(items[rows, -2], torch.full((len(rows),), float(items[rows, -2][0])))
    # the checkpoint keeps it (strict loading)
    save_model(trained.model, trained.config, tmp_path / "two_tower")
    loaded = load_model(tmp_path / "two_tower")
    torch.testing.assert_close(retrieval.embed_items(loaded, tables), items)
    # untuned (eval_k above validation's new items): γ = β
    untuned = config.model_copy(update={"eval_k": 50})
    assert (
        train_retrieval(tables, result.interactions, result.spec, untuned).config.content_prior
        == 0.5
    )
    # off: every new item gets the OOV slot's log q, and the vectors one prior coordinate
    off = config.model_copy(update={"content_prior": False})
    model = train_retrieval(tables, result.interactions, result.spec, off).model
    assert model.config.content_prior is None
    items = retrieval.embed_items(model, tables)
    assert (
        items.shape[1] == model.config.out_dim + 1 and np.unique(items[rows, -1].numpy()).size == 1
    )
