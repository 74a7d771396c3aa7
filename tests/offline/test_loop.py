"""``offline.training.loop.fit``: what an epoch is made of."""

import numpy as np
import torch

from offline.training.loop import TrainerConfig, fit


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
