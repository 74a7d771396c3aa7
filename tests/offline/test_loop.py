"""``offline.training.loop.fit``: what an epoch is made of."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from offline.training.loop import (
    History,
    TrainerConfig,
    _centralize,
    _optimizers,
    _schedule,
    fit,
    parameter_group,
    resolve_device,
)
from offline.training.tracking import Tracking
from shared.errors import ConfigError
from shared.models.inputs import RankerInputs
from shared.models.rankers import RankerConfig, TaskHead, build_ranker


def test_max_examples_caps_each_epoch_with_a_new_draw() -> None:
    model = torch.nn.Linear(1, 1)
    seen: list[np.ndarray] = []

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        seen.append(batch)
        return net(torch.ones(len(batch), 1)).pow(2).mean()

    config = TrainerConfig(epochs=2, batch_size=10, max_examples=100, threads=1)
    history = fit(model, config, 1000, loss_fn, None, "test")
    assert len(history.epochs) == 2 and len(seen) == 20  # 100 examples an epoch, not 1000
    first, second = np.concatenate(seen[:10]), np.concatenate(seen[10:])
    assert len(set(first)) == 100 and set(first) != set(second)


# ------------------------------------------------------------ optimisation options
def _ranker() -> torch.nn.Module:
    config = RankerConfig(
        vocab_size=50, n_cat=3, n_multi=1, n_dense=2, embed_dim=4, hidden=(8,),
        tasks=(TaskHead(name="click"),),
    )  # fmt: skip
    return build_ranker("dcn", config)


def _regression(config: TrainerConfig, validate=None, tracking=None) -> History:  # noqa: ANN001
    """A small regression trained by ``fit``."""
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        return (net(x[batch]).squeeze(1) - y[batch]).pow(2).mean()

    return fit(model, config, 512, loss_fn, validate, "test", tracking)


def test_layer_groups_and_their_learning_rates() -> None:
    model = _ranker()
    groups = {parameter_group(n) for n, _ in model.named_parameters()}
    assert groups == {"embedding", "cross", "deep", "heads"}
    config = TrainerConfig(lr=1e-2, lr_scale={"embedding": 3.0, "heads": 0.5})
    (optimizer,) = _optimizers(model, config)
    assert isinstance(optimizer, torch.optim.AdamW)
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        want = {"embedding": 3e-2, "heads": 5e-3}.get(parameter_group(n), 1e-2)
        assert by_param[id(p)] == want, n
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[id(model.sparse_arch.embedding.weight)] == config.embedding_weight_decay
    assert decays[id(model.over_arch.heads[0].bias)] == 0.0


def test_adam_and_sgd_are_built_with_their_settings() -> None:
    model = _ranker()
    (adam,) = _optimizers(model, TrainerConfig(optimizer="adam", betas=(0.8, 0.95)))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.95)
    (sgd,) = _optimizers(model, TrainerConfig(optimizer="sgd", momentum=0.5, nesterov=True))
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"]


def test_schedules_warm_up_then_decay_to_min_lr_or_stay_flat() -> None:
    total, warmup = 100, 10
    cosine = [_schedule(s, total, warmup, "cosine", 0.1) for s in range(total)]
    assert cosine[0] == 0.1 and cosine[warmup - 1] == 1.0
    assert cosine[-1] == pytest.approx(0.1, abs=1e-3) and min(cosine[warmup:]) >= 0.1
    flat = [_schedule(s, total, warmup, "none") for s in range(warmup, total)]
    assert set(flat) == {1.0}
    assert _schedule(0, total, 0, "cosine") == 1.0  # warmup_steps: 0 starts at lr


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"optimizer": "adam"},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
        {"scheduler": "none", "warmup_steps": 0},
        {"min_lr": 1e-3},
        {"grad_centralization": True},
        {"lr_scale": {"deep": 2.0, "heads": 0.5}},
        {"precision": "bf16"},
        {"precision": "fp16"},
        {"device": "cpu"},
    ],
    ids=[
        "adamw",
        "adam",
        "sgd",
        "no-schedule",
        "min-lr",
        "grad-centralization",
        "lr-scale",
        "bf16",
        "fp16-scaler",
        "device-cpu",
    ],  # fmt: skip
)
def test_every_optimisation_option_trains(options: dict) -> None:
    config = TrainerConfig(epochs=5, batch_size=32, threads=1, **{"lr": 3e-2, **options})
    history = _regression(config)
    losses = [e["train_loss"] for e in history.epochs]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.5, losses


def test_plateau_scales_the_learning_rate_when_validation_stalls() -> None:
    metrics = iter([0.5, 0.6, 0.6, 0.6, 0.6, 0.6])
    config = TrainerConfig(
        epochs=6, batch_size=128, lr=1e-2, scheduler="plateau", warmup_steps=0, patience=10,
        plateau={"factor": 0.5, "patience": 1}, threads=1,
    )  # fmt: skip
    history = _regression(config, validate=lambda _: next(metrics))
    lrs = [e["lr"] for e in history.epochs]
    # gains at epochs 1 and 2; stalls at 3 and 4 (patience 1: halved after the 2nd stall,
    # from epoch 5 on), then at 5 and 6 (halved again, after the last epoch)
    assert lrs == pytest.approx([1e-2] * 4 + [5e-3] * 2)


def test_gradient_centralization_centres_weight_gradients_only() -> None:
    model = torch.nn.Linear(5, 3)
    model(torch.randn(7, 5)).pow(2).sum().backward()
    bias = model.bias.grad.clone()
    _centralize(model)
    torch.testing.assert_close(model.weight.grad.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(model.bias.grad, bias)


def test_bad_optimisation_options_are_refused() -> None:
    for bad in ({"optimizer": "lamb"}, {"betas": (0.9, 1.0)}, {"lr_scale": {"cross": 0}},
                {"lr": 1e-3, "min_lr": 1e-2}, {"lr_scale": {"tower": 2.0}}):  # fmt: skip
        with pytest.raises(ValidationError):
            TrainerConfig(**bad)


@pytest.mark.parametrize(
    "trainer",
    [{"precision": "bf16"}, {"precision": "fp16"}, {"sparse_embeddings": True}],
    ids=["bf16", "fp16", "sparse-hybrid"],
)
def test_both_model_families_train_with_the_precision_and_sparse_options(trainer: dict) -> None:
    from offline import etl  # noqa: PLC0415
    from offline.datasets import load_dataset  # noqa: PLC0415
    from offline.training.ranking import RankingConfig, ranking_data, train_ranker  # noqa: PLC0415
    from offline.training.retrieval import RetrievalConfig, train_retrieval  # noqa: PLC0415
    from shared.features import FeatureTables  # noqa: PLC0415

    data = load_dataset("synthetic", options={"n_users": 60, "n_items": 40, "n_impressions": 3000})
    r = etl.run(data, etl.EtlConfig())
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    trainer = {"epochs": 1, "batch_size": 256, "threads": 1, **trainer}
    ranking = RankingConfig(trainer=trainer, hidden=(16,))
    torch.manual_seed(0)
    result = train_ranker("dcn", tables, ranking_data(tables, r.interactions, r.spec, ranking),
                          r.spec, ranking)  # fmt: skip
    assert np.isfinite(result.history.epochs[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    # trained, and back to dense tables for export
    assert not result.model.sparse_arch.embedding.sparse
    towers = train_retrieval(tables, r.interactions, r.spec, RetrievalConfig(trainer=trainer))
    assert np.isfinite(towers.history.epochs[0]["train_loss"])


def test_sparse_embeddings_step_only_the_rows_a_batch_looked_up() -> None:
    model = _ranker()
    config = TrainerConfig(sparse_embeddings=True, lr=0.1)
    dense, sparse = _optimizers(model, config)
    assert type(sparse) is torch.optim.SparseAdam
    table = model.sparse_arch.embedding
    assert [p for g in sparse.param_groups for p in g["params"]] == [table.weight]
    assert all(p is not table.weight for g in dense.param_groups for p in g["params"])
    before = table.weight.detach().clone()
    rows = torch.tensor([[3, 5, 7]])

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        inputs = RankerInputs(rows, torch.zeros(1, 1, 2, dtype=torch.long), torch.zeros(1, 2))
        return net(inputs)["click"].sum()

    fit(model, TrainerConfig(epochs=1, batch_size=1, sparse_embeddings=True, warmup_steps=0,
                             threads=1), 1, loss_fn, None, "sparse")  # fmt: skip
    moved = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [3, 5, 7]
    with pytest.raises(ValidationError, match="SparseAdam"):
        TrainerConfig(sparse_embeddings=True, embedding_weight_decay=1e-4)


def test_cuda_is_refused_clearly_where_torch_sees_none() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_a_run_resumes_from_its_checkpoint_where_it_stopped(tmp_path: Path) -> None:
    config = TrainerConfig(epochs=4, batch_size=128, lr=1e-2, threads=1, checkpoint_every=1)
    metrics: list[float] = []

    def validate(_: torch.nn.Module) -> float:
        if metrics == ["stop"]:
            raise KeyboardInterrupt  # killed in epoch 3, after the checkpoint of epoch 2
        return metrics.pop(0)

    metrics[:] = [0.1, 0.2, 0.3, 0.4]
    whole = _regression(config, validate)
    metrics[:] = [0.1, 0.2, "stop"]
    with pytest.raises(KeyboardInterrupt):
        _regression(config, validate, Tracking(tmp_path))
    assert (tmp_path / "test.ckpt").is_file()
    metrics[:] = [0.3, 0.4]
    resumed = _regression(config, validate, Tracking(tmp_path, resume=True))
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3, 4] and resumed.best_epoch == 4
    # the same steps, the same losses as the run that never stopped
    assert [e["train_loss"] for e in resumed.epochs] == pytest.approx(
        [e["train_loss"] for e in whole.epochs], rel=1e-5
    )
    longer = config.model_copy(update={"lr": 2e-2})
    with pytest.raises(ConfigError, match="other trainer options.*lr"):
        _regression(longer, validate, Tracking(tmp_path, resume=True))


def test_tensorboard_and_mlflow_record_every_epoch(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
    mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import (  # noqa: PLC0415
        EventAccumulator,
    )

    config = TrainerConfig(epochs=3, batch_size=128, threads=1, tensorboard=True, mlflow=True)
    _regression(config, lambda _: 0.5, Tracking(tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard" / "test"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"epoch/train_loss", "epoch/valid_metric", "epoch/lr", "train/batch_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("epoch/train_loss")] == [1, 2, 3]
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("recsys").experiment_id])
    assert run.info.run_name == "test" and run.data.params["lr"] == "0.002"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
