"""Ranker training throughput (samples/s) on MovieLens-100K features, 2 threads.

    python bench/train.py [--steps 60] [--batch 4096]

Trains DCN-v2 and DeepFM (default config) and, as the baseline of the same run, a
full-rank DCN-v2 with dropout 0.1 on the real ML-100K impressions (interactions plus
sampled negatives, the features the pipeline uses); times forward + backward + AdamW.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from offline import etl
from offline.datasets import load_dataset
from offline.training.impressions import effective_tasks
from offline.training.losses import multitask_loss
from offline.training.ranking import RankingConfig, ranker_config, ranking_data
from shared.features import FeatureTables
from shared.models.rankers import DCNConfig, build_ranker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ml100k", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-100k"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = etl.run(load_dataset("movielens-100k", args.ml100k), etl.EtlConfig())
    tables = FeatureTables.from_frames(result.users, result.items, result.spec, result.feature_map)
    config = RankingConfig()
    train = ranking_data(tables, result.interactions, result.spec, config)["train"]
    tasks = effective_tasks(result.spec)
    labels = {t.name: torch.from_numpy(train.labels[t.name]) for t in tasks}
    print(f"ml-100k ranker impressions: {len(train):,}; fields {tables.ranker_widths}")
    rng = np.random.default_rng(0)
    # the defaults, then full-rank DCN-v2 with dropout 0.1 (the earlier default) as a baseline
    baseline = config.model_copy(update={"dropout": 0.1, "dcn": DCNConfig()})
    rates = {}
    for name, kind, cfg in (
        ("dcn", "dcn", config),
        ("deepfm", "deepfm", config),
        ("dcn full rank, dropout 0.1", "dcn", baseline),
    ):
        torch.manual_seed(0)
        model = build_ranker(kind, ranker_config(kind, tables, result.spec, cfg))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        for step in range(args.steps + 5):
            if step == 5:
                start = time.perf_counter()  # after warm-up
            batch = rng.integers(0, len(train), args.batch)
            inputs = tables.ranker_inputs(
                train.user[batch], train.item[batch], train.context.take(batch)
            )
            idx = torch.from_numpy(batch)
            loss, _ = multitask_loss(
                model(inputs), {k: v[idx] for k, v in labels.items()}, model.config.tasks
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates[name] = args.steps * args.batch / (time.perf_counter() - start)
        print(
            f"{name}: {rates[name]:,.0f} samples/s "
            f"(batch {args.batch}, {args.threads} threads, features gathered per batch included)"
        )
    print(f"default dcn / full-rank baseline: ×{rates['dcn'] / rates[name]:.2f}")


if __name__ == "__main__":
    main()
