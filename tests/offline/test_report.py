from pathlib import Path

import numpy as np

from offline.evaluate import below_chance
from offline.report import NORMS_PNG, TRAINING_PNG, VS_BASELINE_PNG, write_report
from shared.bundle import Files

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ranking_keys(scale: float) -> dict[str, float]:
    return {
        "recall@10": 0.05 * scale,
        "recall@50": 0.15 * scale,
        "ndcg@10": 0.04 * scale,
        "precision@10": 0.02 * scale,
        "mrr": 0.1 * scale,
        "n_users": 943,
    }


def full_inputs() -> tuple[dict, dict, dict, list]:
    metrics = {
        "dataset": "movielens-100k",
        "retrieval": ranking_keys(2.0),
        "popularity": ranking_keys(1.0),
        "ranked": ranking_keys(2.2),
        "ranking": {
            "dcn": {"like": {"auc": 0.74, "logloss": 0.55}, "click": {"auc": 0.70}},
            "deepfm": {"like": {"auc": 0.73, "logloss": 0.56}},
        },
        "oracle": {"click_auc": 0.81},
        "index": {"type": "IVFFlat", "nlist": 64, "recall_vs_exact@50": 0.97},
    }
    histories = {
        model: [
            {"epoch": e, "train_loss": 1.0 / e, "valid_metric": 0.5 + 0.05 * e, "lr": 1e-3}
            for e in range(1, 4)
        ]
        for model in ("two_tower", "dcn", "deepfm")
    }
    diagnostics = {
        "item_norms": np.random.default_rng(0).gamma(2.0, 1.0, size=300).tolist(),
        "neighbour_category_agreement": 0.42,
        "neighbour_baseline": 0.12,
    }
    samples = [
        {"user_id": "196", "history": ["Kolya (1996)", "Fargo (1996)"], "recommended": ["Heat"]},
        {"user_id": "7", "history": [], "recommended": ["A | B", "C"]},
    ]
    return metrics, histories, diagnostics, samples


def test_write_report_writes_markdown_and_plots(tmp_path: Path) -> None:
    written = write_report(tmp_path, *full_inputs())
    assert written == [Files.REPORT, VS_BASELINE_PNG, TRAINING_PNG, NORMS_PNG]
    for name in written[1:]:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / Files.REPORT).read_text()
    assert "movielens-100k" in md
    for model in ("two_tower", "dcn", "deepfm", "popularity", "retrieval + ranker"):
        assert model in md
    for name in written[1:]:
        assert f"]({name})" in md
    assert "| recall@10 | 0.0500 | 0.1000 | 0.1100 | ×2.00 | +0.0100 |" in md
    assert "| n_users | 943 | 943 | 943 |  |  |" in md
    assert "| dcn | click | 0.7000 | n/a | 0.8100 |" in md  # oracle beside the task
    assert "IVFFlat" in md and "0.4200" in md and "×3.50" in md
    assert "Kolya (1996)" in md and "A \\| B" in md


def test_write_report_tolerates_missing_sections(tmp_path: Path) -> None:
    written = write_report(tmp_path / "empty", {}, {}, {}, [])
    assert written == [Files.REPORT]
    assert (tmp_path / "empty" / Files.REPORT).read_text().startswith("# Offline evaluation")

    metrics = {"dataset": "synthetic", "retrieval": {"recall@50": 0.3}, "ranking": {"dcn": {}}}
    histories = {"dcn": [], "two_tower": [{"train_loss": 0.7}]}
    written = write_report(tmp_path / "partial", metrics, histories, {"item_norms": None}, [{}])
    assert written == [Files.REPORT, VS_BASELINE_PNG, TRAINING_PNG]
    md = (tmp_path / "partial" / Files.REPORT).read_text()
    assert "two_tower" in md and "| recall@50 | 0.3000 |" in md
    assert "Ranking models" not in md and "Embedding diagnostics" not in md


def test_a_ranker_below_chance_is_reported_as_a_failure(tmp_path: Path) -> None:
    ranking = {"dcn": {"interact": {"auc": 0.47}}, "deepfm": {"interact": {"auc": 0.81}}}
    failures = below_chance(ranking)
    assert len(failures) == 1 and failures[0].startswith("dcn: interact AUC 0.470 is below chance")
    write_report(tmp_path, {"ranking": ranking, "failures": failures})
    report = (tmp_path / Files.REPORT).read_text()
    assert "## Failures" in report and "**FAILED** dcn: interact AUC 0.470" in report
    write_report(tmp_path, {"ranking": {"dcn": {"interact": {"auc": 0.81}}}, "failures": []})
    assert "Failures" not in (tmp_path / Files.REPORT).read_text()
