import numpy as np
import pytest
import torch

from offline import etl
from offline.datasets import load_dataset
from offline.training import retrieval
from offline.training.loop import TrainerConfig
from offline.training.retrieval import RetrievalConfig, top_k, train_retrieval
from shared.errors import ConfigError
from shared.features import FeatureTables


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
