"""The offline report: ``report.md`` plus PNG plots, written into a bundle directory.

Inputs are plain dicts (what the pipeline also stores as JSON), and every section is
optional: a missing key skips its section and its plot rather than failing.

- ``metrics``: ``dataset``; ``retrieval`` / ``ranked`` / ``popularity`` dicts of
  ranking metrics (``recall@50``, ``ndcg@10``, ...), ``ranked`` and ``ranker_only``
  per ranker (the served order, and the ranker's order alone); ``ranking``:
  ``{model: {task: {"auc": .., "logloss": ..}}}``; optional ``oracle``
  (``{"<task>_auc": ..}``), ``list_value`` (``{order: {"clicks": .., "purchases": ..,
  "clicks_of_oracle": ..}}``, synthetic data) and ``index`` (flat stats).
- ``histories``: ``{model: [{"epoch": 1, "train_loss": .., "valid_metric": .., "lr": ..}]}``.
- ``diagnostics``: ``item_norms`` (pre-normalisation norms), ``neighbour_category_agreement``
  and ``neighbour_baseline``; other scalar entries are listed as they are.
- ``samples``: ``[{"user_id": .., "history": [..], "recommended": [..]}]``.

Plots use the Agg canvas on a bare :class:`~matplotlib.figure.Figure`: no pyplot, no
global backend switch, nothing shown.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from shared.bundle import Files, atomic_path

__all__ = ["NORMS_PNG", "TRAINING_PNG", "VS_BASELINE_PNG", "write_report"]

log = logging.getLogger(__name__)

TRAINING_PNG = "training_curves.png"
NORMS_PNG = "embedding_norms.png"
VS_BASELINE_PNG = "metrics_vs_baseline.png"

# (metrics key, column title), in table order; the baseline comes first.
_SYSTEMS = (
    ("popularity", "popularity"),
    ("retrieval", "retrieval"),
    ("ranked", "retrieval + ranker"),
)
_FAMILY_ORDER = ("recall", "precision", "ndcg", "map", "hitrate", "mrr")
_NOT_CURVES = {"epoch", "step", "lr"}


# --- formatting --------------------------------------------------------------------
def _fmt(value: Any) -> str:
    """A table cell: floats to 4 decimals, ``n/a`` for NaN/None, pipes escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    return float(value) if _is_number(value) else float("nan")


def _metric_sort_key(name: str) -> tuple[int, str, int]:
    """``recall@10`` < ``recall@50`` < ``ndcg@10``; unknown families last, by name."""
    family, _, k = name.partition("@")
    rank = _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)
    return rank, family, int(k) if k.isdigit() else 0


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _finite(values: Any) -> np.ndarray:
    """A 1-D float array of the finite entries of ``values`` (``None`` gives an empty one)."""
    arr = np.asarray([] if values is None else values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def _items(values: Any) -> list[Any]:
    """A list from a list, tuple or array; ``None`` or a scalar gives ``[]`` / ``[scalar]``."""
    if values is None:
        return []
    if isinstance(values, str) or np.ndim(values) == 0:
        return [values]
    return list(values)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


# --- sections ----------------------------------------------------------------------
def _retrieval_section(metrics: Mapping[str, Any]) -> list[str]:
    ranked = metrics.get("ranked")
    if (
        isinstance(ranked, Mapping)
        and ranked
        and all(isinstance(v, Mapping) for v in ranked.values())
    ):
        # one "retrieval + ranker" column per ranker; the gain column compares the first
        metrics = {k: v for k, v in metrics.items() if k != "ranked"} | {
            "ranked": next(iter(ranked.values()))
        }
        metrics |= {f"ranked:{kind}": block for kind, block in ranked.items()}
        extra = [(f"ranked:{kind}", f"retrieval + {kind}") for kind in ranked]
        alone = metrics.get("ranker_only")
        if isinstance(alone, Mapping):  # the rankers' own order, before any retrieval blend
            metrics |= {f"alone:{kind}": block for kind, block in alone.items()}
            extra += [(f"alone:{kind}", f"{kind} alone") for kind in alone]
    else:
        extra = [("ranked", "retrieval + ranker")] if isinstance(ranked, Mapping) else []
    systems = [
        (key, title) for key, title in _SYSTEMS[:2] if isinstance(metrics.get(key), Mapping)
    ] + extra
    if not systems:
        return []
    names = sorted(
        {n for key, _ in systems for n, v in metrics[key].items() if _is_number(v)},
        key=_metric_sort_key,
    )
    present = {key for key, _ in systems}
    header = ["metric"] + [title for _, title in systems]
    lift = {"popularity", "retrieval"} <= present
    gain = "retrieval" in present and "ranked" in metrics
    first = next((t for k, t in systems if k.startswith("ranked")), "ranked").removeprefix(
        "retrieval + "
    )
    header += ["retrieval / popularity"] * lift + [f"{first} − retrieval"] * gain
    rows = []
    for name in names:
        vals = {key: _as_float(metrics[key].get(name)) for key, _ in systems}
        vals["ranked"] = _as_float(metrics["ranked"].get(name)) if gain else math.nan
        row: list[Any] = [name] + [vals[key] for key, _ in systems]
        if name.startswith("n_"):  # a count (users evaluated), not a score
            row = [name] + [metrics[key].get(name) for key, _ in systems]
            rows.append(row + [""] * (lift + gain))
            continue
        if lift:
            pop, ret = vals["popularity"], vals["retrieval"]
            row.append(f"×{ret / pop:.2f}" if pop > 0 and not math.isnan(ret) else "n/a")
        if gain:
            delta = vals["ranked"] - vals["retrieval"]
            row.append("n/a" if math.isnan(delta) else f"{delta:+.4f}")
        rows.append(row)
    return ["## Retrieval and re-ranking", "", *_table(header, rows), ""]


def _baselines_section(metrics: Mapping[str, Any]) -> list[str]:
    baselines = metrics.get("baselines")
    if not isinstance(baselines, Mapping) or not baselines:
        return []
    ranked = metrics.get("ranked") if isinstance(metrics.get("ranked"), Mapping) else {}
    systems = {f"retrieval + {k}": v for k, v in ranked.items() if isinstance(v, Mapping)}
    systems |= {"retrieval": metrics.get("retrieval") or {}, **baselines}
    names = sorted(
        {
            n
            for v in systems.values()
            for n, x in v.items()
            if _is_number(x) and not n.startswith("n_")
        },
        key=_metric_sort_key,
    )
    rows = [[n, *(v.get(n) for v in systems.values())] for n in names]
    return ["## Against strong baselines", "", *_table(["metric", *systems], rows), ""]


def _recall_lists_section(metrics: Mapping[str, Any]) -> list[str]:
    lists = metrics.get("recall_lists")
    if not isinstance(lists, Mapping) or not lists:
        return []
    columns = sorted({c for v in lists.values() for c in v}, key=_metric_sort_key)
    rows = [[name, *(v.get(c) for c in columns)] for name, v in lists.items()]
    return [
        "## Recall list composition",
        "",
        *_table(["published list", *columns], rows),
        "",
        "_The two-tower's list with the hot list after it (`hot_every=0`, the default) or "
        "one hot item after every 4 (`index.hot_every: 4`), seen items left out._",
        "",
    ]


def _ranking_section(metrics: Mapping[str, Any]) -> list[str]:
    ranking = metrics.get("ranking")
    if not isinstance(ranking, Mapping) or not ranking:
        return []
    oracle = metrics.get("oracle") if isinstance(metrics.get("oracle"), Mapping) else {}
    tasks = [
        (model, task, vals)
        for model, per_task in ranking.items()
        if isinstance(per_task, Mapping)
        for task, vals in per_task.items()
        if isinstance(vals, Mapping)
    ]
    if not tasks:
        return []
    columns = sorted({c for _, _, vals in tasks for c in vals}, key=lambda c: (c != "auc", c))
    with_oracle = any(f"{task}_auc" in oracle for _, task, _ in tasks)
    header = ["model", "task", *columns] + ["oracle auc"] * with_oracle
    rows = []
    for model, task, vals in tasks:
        row = [model, task, *(vals.get(c) for c in columns)]
        rows.append(row + [oracle.get(f"{task}_auc")] * with_oracle)
    lines = ["## Ranking models", "", *_table(header, rows), ""]
    if with_oracle:
        lines += [
            "_Oracle AUC: the data's own generating probabilities scored as a model "
            "(where the dataset provides them), a ceiling to compare against._",
            "",
        ]
    return lines


def _value_section(metrics: Mapping[str, Any]) -> list[str]:
    value = metrics.get("list_value")
    if not isinstance(value, Mapping) or "oracle" not in value:
        return []
    header = ["list", "expected clicks", "expected purchases", "clicks of oracle's",
              "purchases of oracle's"]  # fmt: skip
    rows = [
        [name, v.get("clicks"), v.get("purchases"), v.get("clicks_of_oracle", 1.0),
         v.get("purchases_of_oracle", 1.0)]
        for name, v in value.items()
    ]  # fmt: skip
    return [
        "## What ranking adds: the value of the top 10",
        "",
        *_table(header, rows),
        "",
        "_Each test user's top 10 from the same retrieval candidates, in their first test "
        "context (the slots 0–9 as shown), priced by the generator's true probabilities "
        "(position bias included): the served order, retrieval's alone, the ranker's "
        "alone, and the oracle's best 10 by each measure._",
        "",
    ]


def _index_section(metrics: Mapping[str, Any]) -> list[str]:
    index = metrics.get("index")
    if not isinstance(index, Mapping) or not index:
        return []
    return ["## Index", "", *_table(["stat", "value"], list(index.items())), ""]


def _diagnostics_section(diagnostics: Mapping[str, Any], with_plot: bool) -> list[str]:
    lines: list[str] = []
    norms = _finite(diagnostics.get("item_norms"))
    if norms.size:
        lines.append(
            f"- item embedding norms before normalisation ({norms.size} items): "
            f"mean {norms.mean():.4f}, std {norms.std():.4f}, "
            f"min {norms.min():.4f}, max {norms.max():.4f}"
        )
    agree = diagnostics.get("neighbour_category_agreement")
    if _is_number(agree):
        base = diagnostics.get("neighbour_baseline")
        text = f"- nearest-neighbour category agreement: {_fmt(float(agree))}"
        if _is_number(base):
            text += f" (random-pair baseline {_fmt(float(base))}"
            text += f", ×{agree / base:.2f})" if base > 0 else ")"
        lines.append(text)
    known = {"item_norms", "neighbour_category_agreement", "neighbour_baseline"}
    for key, value in diagnostics.items():
        if key not in known and (_is_number(value) or isinstance(value, str)):
            lines.append(f"- {key}: {_fmt(value)}")
    if with_plot:
        lines += ["", f"![item embedding norms]({NORMS_PNG})"]
    lines += _against_chance(
        diagnostics.get("user_alignment"), "agreement", "baseline",
        "User embeddings against user metadata: how often a user's nearest users share the "
        "feature's value, against random pairs",
        ["user feature", "neighbour agreement", "random pairs"],
    )  # fmt: skip
    lines += _against_chance(
        diagnostics.get("category_hits"), "recommended", "random",
        "Category hits: how often a recommended item (top 10) shares the feature's value with "
        "the user's earlier items, against a random item",
        ["item feature", "recommended", "random item"],
    )  # fmt: skip
    found = [c for c in diagnostics.get("score_correlation") or () if isinstance(c, Mapping)]
    if found:
        lines += ["", "Item metadata against the model's score (the test users' mean logit), "
                  "strongest Pearson r first:", ""]  # fmt: skip
        rows = [(c.get("feature"), c.get("r"), _p_value(c.get("p"))) for c in found]
        lines += _table(["item feature", "Pearson r", "p"], rows)
    return ["## Embedding diagnostics", "", *lines, ""] if lines else []


def _against_chance(
    entries: Any, value: str, chance: str, title: str, header: list[str]
) -> list[str]:
    if not isinstance(entries, Mapping) or not entries:
        return []
    rows = [(name, e.get(value), e.get(chance)) for name, e in entries.items()
            if isinstance(e, Mapping)]  # fmt: skip
    return ["", title + ":", "", *_table(header, rows)]


def _p_value(p: Any) -> str:
    return f"{p:.2g}" if _is_number(p) else "n/a"


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for sample in samples:
        if not isinstance(sample, Mapping):
            continue
        lines += [f"### User {_fmt(sample.get('user_id', '?'))}", ""]
        history = [_fmt(h) for h in _items(sample.get("history"))]
        recommended = [_fmt(r) for r in _items(sample.get("recommended"))]
        lines.append("- history: " + ("; ".join(history) if history else "(none)"))
        lines.append("- recommended:")
        lines += [f"  {i}. {r}" for i, r in enumerate(recommended, start=1)] or ["  (none)"]
        lines.append("")
    return ["## Sample recommendations", "", *lines] if lines else []


# --- plots -------------------------------------------------------------------------
def _plot_training(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> bool:
    models = [(m, list(h)) for m, h in histories.items() if h]
    if not models:
        return False
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (model, history) in zip(axes, models, strict=False):
        x = [_as_float(row.get("epoch", i + 1)) for i, row in enumerate(history)]
        keys = sorted({k for row in history for k, v in row.items() if _is_number(v)})
        curves = [k for k in keys if k not in _NOT_CURVES]
        right = ax.twinx() if any("loss" not in k for k in curves) else None
        for n, key in enumerate(curves):
            target = ax if "loss" in key or right is None else right
            y = [_as_float(row.get(key)) for row in history]
            target.plot(x, y, marker="o", markersize=3, label=key, color=f"C{n}")
        ax.set_title(model)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        handles, labels = ax.get_legend_handles_labels()
        if right is not None:
            right.set_ylabel("validation")
            more = right.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        if handles:
            ax.legend(handles, labels, fontsize="small")
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    _save(fig, path)
    return True


def _plot_norms(norms: np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.hist(norms, bins=min(50, max(5, norms.size // 10)), color="C0")
    ax.axvline(float(norms.mean()), color="C3", linestyle="--", label="mean")
    ax.set_xlabel("item embedding norm (before normalisation)")
    ax.set_ylabel("items")
    ax.legend()
    _save(fig, path)


def _plot_vs_baseline(metrics: Mapping[str, Any], path: Path) -> bool:
    systems = [(key, title) for key, title in _SYSTEMS if isinstance(metrics.get(key), Mapping)]
    names = sorted(
        {
            n
            for key, _ in systems
            for n, v in metrics[key].items()
            if re.fullmatch(r"(recall|ndcg)@\d+", n) and _is_number(v)
        },
        key=_metric_sort_key,
    )
    if not systems or not names:
        return False
    fig = Figure(figsize=(max(6, 1.2 * len(names) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(systems)
    for n, (key, title) in enumerate(systems):
        y = [_as_float(metrics[key].get(name)) for name in names]
        ax.bar(x + (n - (len(systems) - 1) / 2) * width, y, width, label=title, color=f"C{n}")
    ax.set_xticks(x, names)
    ax.set_ylabel("score")
    ax.set_title("retrieval and re-ranking vs popularity")
    ax.legend()
    _save(fig, path)
    return True


# --- entry point -------------------------------------------------------------------
def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    histories: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    diagnostics: Mapping[str, Any] | None = None,
    samples: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Write ``report.md`` and its PNG plots into ``out_dir``.

    Returns:
        The file names written (relative to ``out_dir``), ``report.md`` first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    histories = histories or {}
    diagnostics = diagnostics or {}
    written: list[str] = []

    has_vs = _plot_vs_baseline(metrics, out_dir / VS_BASELINE_PNG)
    has_curves = _plot_training(histories, out_dir / TRAINING_PNG)
    norms = _finite(diagnostics.get("item_norms"))
    if norms.size:
        _plot_norms(norms, out_dir / NORMS_PNG)

    dataset = metrics.get("dataset")
    lines = [f"# Offline evaluation: {_fmt(dataset)}" if dataset else "# Offline evaluation", ""]
    failures = metrics.get("failures") or []
    if failures:
        lines += ["## Failures", "", *(f"- **FAILED** {f}" for f in failures), ""]
    lines += _retrieval_section(metrics)
    if has_vs:
        lines += [f"![metrics vs popularity]({VS_BASELINE_PNG})", ""]
    lines += _baselines_section(metrics)
    lines += _recall_lists_section(metrics)
    lines += _ranking_section(metrics)
    lines += _value_section(metrics)
    lines += _index_section(metrics)
    if has_curves:
        lines += ["## Training", "", f"![training curves]({TRAINING_PNG})", ""]
        lines += [f"- {model}: {len(h)} epochs" for model, h in histories.items() if h] + [""]
    lines += _diagnostics_section(diagnostics, with_plot=bool(norms.size))
    lines += _samples_section(samples or [])

    with atomic_path(out_dir / Files.REPORT) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    written.append(Files.REPORT)
    written += [
        name for name, made in ((VS_BASELINE_PNG, has_vs), (TRAINING_PNG, has_curves)) if made
    ]
    if norms.size:
        written.append(NORMS_PNG)
    log.info("report written to %s: %s", out_dir, ", ".join(written))
    return written
