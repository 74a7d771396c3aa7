"""One option's measured effect on MovieLens, next to the default run (docs/options.md).

    python bench/options.py ranking '{"dcn": {"layer_norm": true}}'  [--work DIR]
    python bench/options.py retrieval '{"loss": "bpr"}'
    python bench/options.py etl '{"derived": ["rating_std"]}'
    python bench/options.py default
    python bench/options.py --dataset movielens-latest ranking '{"deep_block": "residual"}'

The default run (`default`) writes a bundle under ``--work`` once: ETL, the two-tower, the
rankers, evaluate. An option then copies that bundle and reruns only what it changes, so
each line differs from the default in that option alone (same seed, same split):
``ranking`` trains the rankers again, ``retrieval`` the two-tower (then the rankers, whose
blend weight is tuned against its logit), ``etl`` everything, as does ``config`` (the
option a config of several sections, e.g. two defaults changed together). ``serving: {refit: false}``
and one thread per trainer, so two runs can share two cores. Prints one markdown row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from shared.bundle import Files

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "movielens-100k": ROOT.parent / "shared/data/ml-100k",
    "movielens-latest": ROOT.parent / "shared/data/ml-latest-small",
    "synthetic": None,  # generated
}
BASE = {
    "serving": {"refit": False},
    "retrieval": {"trainer": {"threads": 1}},
    "ranking": {"trainer": {"threads": 1}},
}
STEPS = {
    "default": ["etl", "train-retrieval", "train-ranking", "evaluate"],
    "etl": ["etl", "train-retrieval", "train-ranking", "evaluate"],
    "config": ["etl", "train-retrieval", "train-ranking", "evaluate"],  # sections of a config
    "retrieval": ["train-retrieval", "train-ranking", "evaluate"],
    "ranking": ["train-ranking", "evaluate"],
}


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def run(section: str, option: dict, work: Path, dataset: str = "movielens-100k") -> Path:
    """The bundle folder the option's steps wrote."""
    name = "default" if section == "default" else f"{section}-{json.dumps(option, sort_keys=True)}"
    folder = work / "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:120]
    overlay = option if section == "config" else {section: option}
    config = BASE if section == "default" else merged(BASE, overlay)
    if folder.exists():
        shutil.rmtree(folder)
    if section in ("ranking", "retrieval"):
        shutil.copytree(work / "default", folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for step in STEPS[section]:
        subprocess.run(
            [sys.executable, "-m", "offline", step, "--dataset", dataset,
             *(["--data-dir", str(DATA[dataset])] if DATA[dataset] else []),
             "--config", str(folder / "config.yaml"),
             "--artifacts", str(folder / "artifacts")],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return folder


def row(label: str, folder: Path, section: str) -> str:
    artifacts = folder / "artifacts"
    bundle = artifacts / (artifacts / "LATEST").read_text().strip()
    m = json.loads((bundle / Files.METRICS).read_text())
    history = json.loads((bundle / Files.HISTORY).read_text())

    def best(name: str) -> list:
        h = history[name]
        return [h["best_epoch"], h["epochs"][h["best_epoch"] - 1]["valid_metric"]]

    if section == "retrieval":
        cells = [*best("two_tower"), m["retrieval"]["recall@50"], m["retrieval"]["ndcg@10"]]
    else:
        ranking, ranked = m["ranking"]["dcn"], m["ranked"]["dcn"]
        cells = [*best("dcn"), ranking["like"]["auc"],
                 ranking["interact"]["auc"], f"{ranked['ndcg@10']:.4f} ({ranked['retrieval_weight']:g})",
                 m["ranker_only"]["dcn"]["ndcg@10"]]  # fmt: skip
        if section == "etl":
            cells += [m["retrieval"]["recall@50"]]
    shown = [f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells]
    return f"| {label} | " + " | ".join(shown) + " |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=list(STEPS))
    parser.add_argument("option", nargs="?", default="{}", help="the section's keys, as JSON")
    parser.add_argument("--label", help="the row's first cell (default: the option)")
    parser.add_argument("--dataset", choices=list(DATA), default="movielens-100k")
    parser.add_argument("--work", type=Path, help="default: artifacts/options/<dataset>")
    parser.add_argument(
        "--as",
        dest="shown_as",
        choices=["retrieval", "ranking", "etl"],
        help="the row's columns (default: the section's; config: etl's)",
    )
    args = parser.parse_args()
    option = json.loads(args.option)
    work = args.work or ROOT / "artifacts/options" / args.dataset
    folder = run(args.section, option, work, args.dataset)
    label = args.label or (f"`{args.section}: {json.dumps(option)}`" if option else "default")
    shown = args.shown_as or {"config": "etl", "default": "ranking"}.get(args.section, args.section)
    print(row(label, folder, shown))


if __name__ == "__main__":
    main()
