"""Run by torchrun from test_ddp.py: train a tiny ranker under DDP, save this rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from offline import etl
from offline.datasets import load_dataset
from offline.training.loop import TrainerConfig
from offline.training.ranking import RankingConfig, ranker_config, ranking_data, train_ranker
from shared.features import FeatureTables
from shared.models.rankers import build_ranker


def main(out: Path) -> None:
    data = load_dataset(
        "synthetic", options={"n_users": 200, "n_items": 100, "n_impressions": 6000}
    )
    result = etl.run(data, etl.EtlConfig())
    tables = FeatureTables.from_frames(result.users, result.items, result.spec, result.feature_map)
    config = RankingConfig(
        models=("dcn",), hidden=(32,), trainer=TrainerConfig(epochs=2, batch_size=256, threads=1)
    )
    splits = ranking_data(tables, result.interactions, result.spec, config)
    trained = train_ranker("dcn", tables, splits, result.spec, config)
    rank = dist.get_rank()
    if rank == 0:  # the same seed builds the same starting weights train_ranker began from
        torch.manual_seed(config.trainer.seed)
        initial = build_ranker("dcn", ranker_config("dcn", tables, result.spec, config))
        torch.save(initial.state_dict(), out / "initial.pt")
    torch.save(
        {k: v.clone() for k, v in trained.model.state_dict().items()}, out / f"rank{rank}.pt"
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
