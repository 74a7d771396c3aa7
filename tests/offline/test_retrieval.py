import pytest

from offline import etl
from offline.datasets import load_dataset
from offline.training.loop import TrainerConfig
from offline.training.retrieval import RetrievalConfig, train_retrieval
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
    ],
    ids=["sampled-no-logq", "full-softmax", "bce-random", "bce-mixed"],
)
def test_every_retrieval_loss_trains_and_validates(tiny, options) -> None:
    tables, result = tiny
    config = RetrievalConfig(**options, trainer=TrainerConfig(epochs=2, batch_size=128, patience=2))
    trained = train_retrieval(tables, result.interactions, result.spec, config)
    losses = [row["train_loss"] for row in trained.history.epochs]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    assert losses[1] < losses[0]
    assert 0.0 <= trained.history.best_metric <= 1.0
