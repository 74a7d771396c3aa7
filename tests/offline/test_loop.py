"""``offline.training.loop.fit``: what an epoch is made of."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from offline.training.loop import (
    History,
    TrainerConfig,
    _centralize,
    _optimizer,
    _schedule,
    fit,
    parameter_group,
)
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


def _regression(config: TrainerConfig, validate=None) -> History:  # noqa: ANN001
    """A small regression trained by ``fit``."""
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def loss_fn(net: torch.nn.Module, batch: np.ndarray) -> torch.Tensor:
        return (net(x[batch]).squeeze(1) - y[batch]).pow(2).mean()

    return fit(model, config, 512, loss_fn, validate, "test")


def test_layer_groups_and_their_learning_rates() -> None:
    model = _ranker()
    groups = {parameter_group(n) for n, _ in model.named_parameters()}
    assert groups == {"embedding", "cross", "deep", "heads"}
    config = TrainerConfig(lr=1e-2, lr_scale={"embedding": 3.0, "heads": 0.5})
    optimizer = _optimizer(model, config)
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
    adam = _optimizer(model, TrainerConfig(optimizer="adam", betas=(0.8, 0.95)))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.95)
    sgd = _optimizer(model, TrainerConfig(optimizer="sgd", momentum=0.5, nesterov=True))
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


def test_both_model_families_train_under_bf16_autocast() -> None:
    from offline import etl  # noqa: PLC0415
    from offline.datasets import load_dataset  # noqa: PLC0415
    from offline.training.ranking import RankingConfig, ranking_data, train_ranker  # noqa: PLC0415
    from offline.training.retrieval import RetrievalConfig, train_retrieval  # noqa: PLC0415
    from shared.features import FeatureTables  # noqa: PLC0415

    data = load_dataset("synthetic", options={"n_users": 60, "n_items": 40, "n_impressions": 3000})
    r = etl.run(data, etl.EtlConfig())
    tables = FeatureTables.from_frames(r.users, r.items, r.spec, r.feature_map)
    trainer = {"epochs": 1, "batch_size": 256, "precision": "bf16", "threads": 1}
    ranking = RankingConfig(trainer=trainer, hidden=(16,))
    result = train_ranker("dcn", tables, ranking_data(tables, r.interactions, r.spec, ranking),
                          r.spec, ranking)  # fmt: skip
    assert np.isfinite(result.history.epochs[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    towers = train_retrieval(tables, r.interactions, r.spec, RetrievalConfig(trainer=trainer))
    assert np.isfinite(towers.history.epochs[0]["train_loss"])
